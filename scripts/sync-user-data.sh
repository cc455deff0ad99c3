#!/usr/bin/env bash
# Copy the broker files into the user data of the broker launch template.
#
# Usage: scripts/sync-user-data.sh [TEMPLATE]   (default template.yaml)
#
# CloudFormation cannot read files, so the launch template's user data in
# template.yaml carries deploy/cloudwatch-agent.json and deploy/broker-bootstrap.sh,
# each as a YAML block marked with how it is carried:
#
#     - | # verbatim: deploy/cloudwatch-agent.json
#     - | # gzip base64: deploy/broker-bootstrap.sh
#
# This script rewrites every such block from the file it names (run it from the
# repository root after editing either file). A verbatim block is the file as it is. A
# "gzip base64" block is the file compressed (gzip -9n) and base64-encoded in lines of
# 76 characters, which the user data decodes (base64 -d | gzip -dc) back into the file,
# byte for byte, comments included: EC2 allows 16 KB of user data (16384 bytes before
# base64), and the script alone is larger than that. A block that already decodes to
# the file is left as it is, so that another gzip build, whose bytes may differ, does
# not rewrite an up-to-date template. test/template_userdata_test.go checks the
# template the same way (and the size).
set -euo pipefail

template=${1:-template.yaml}
[[ -f $template ]] || {
	echo "sync-user-data: $template not found" >&2
	exit 1
}

# block FILE: the current content of FILE's block in the template, unindented.
block() {
	awk -v file="$1" '
		/^ *- \| # (verbatim|gzip base64): [^ ]+$/ {
			name = $0; sub(/.*: /, "", name)
			inside = name == file
			indent = $0; sub(/-.*/, "", indent)
			next
		}
		inside {
			if ($0 == "") { print ""; next }
			match($0, /^ */)
			if (RLENGTH <= length(indent)) { inside = 0; next }
			print substr($0, length(indent) + 3)
		}
	' "$template"
}

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT
n=0
copies=()
while IFS=: read -r how file; do
	file=${file# }
	[[ -f $file ]] || {
		echo "sync-user-data: $template embeds $file, which does not exist" >&2
		exit 1
	}
	n=$((n + 1))
	copy=$tmpdir/$n
	case $how in
	verbatim) cat "$file" >"$copy" ;;
	"gzip base64")
		block "$file" >"$copy"
		if ! base64 -d <"$copy" 2>/dev/null | gzip -dc 2>/dev/null | cmp -s - "$file"; then
			gzip -9nc "$file" | base64 -w 76 >"$copy"
		fi
		;;
	esac
	copies+=("$file=$copy")
done < <(sed -n 's/^ *- | # \(verbatim\|gzip base64\): \([^ ]*\)$/\1: \2/p' "$template")

tmp=$(mktemp "$template.XXXXXX")
trap 'rm -rf "$tmpdir" "$tmp"' EXIT
awk -v copies="${copies[*]}" '
	BEGIN {
		n = split(copies, pairs, " ")
		for (i = 1; i <= n; i++) {
			eq = index(pairs[i], "=")
			copy[substr(pairs[i], 1, eq - 1)] = substr(pairs[i], eq + 1)
		}
	}
	# A marked block: print its header, then the copy of the file, indented two
	# spaces more than the dash, then skip the old content (lines indented more than
	# the dash).
	/^ *- \| # (verbatim|gzip base64): [^ ]+$/ {
		print
		indent = $0; sub(/-.*/, "", indent)
		file = $0; sub(/.*: /, "", file)
		while ((getline line < copy[file]) > 0) print (line == "" ? "" : indent "  " line)
		close(copy[file])
		skipping = 1
		next
	}
	skipping {
		if ($0 == "") next
		match($0, /^ */)
		if (RLENGTH > length(indent)) next
		skipping = 0
	}
	{ print }
' "$template" >"$tmp"
if cmp -s "$tmp" "$template"; then
	echo "sync-user-data: $template is up to date"
else
	cat "$tmp" >"$template"
	echo "sync-user-data: updated the user data in $template"
fi
