#!/usr/bin/env bash
# Copy the broker files into the user data of the broker launch template.
#
# Usage: scripts/sync-user-data.sh [TEMPLATE]   (default template.yaml)
#
# CloudFormation cannot read files, so the launch template's user data in
# template.yaml carries deploy/broker-bootstrap.sh and deploy/cloudwatch-agent.json,
# each as a YAML block marked
#
#     - | # verbatim: deploy/broker-bootstrap.sh
#
# This script rewrites every such block from the file it names (run it from the
# repository root after editing either file). A JSON file is copied as it is. A shell
# script (*.sh) is copied without its comment-only lines and blank lines outside
# here-documents (its first line, the shebang, is kept; so is every line of a
# here-document): EC2 allows 16 KB of user data, and the script's comments are for
# people reading the file. Every other line is copied byte for byte.
# test/template_userdata_test.go fails while a block differs from its file so
# copied, and checks that the copy behaves as the file does.
set -euo pipefail

template=${1:-template.yaml}
[[ -f $template ]] || {
	echo "sync-user-data: $template not found" >&2
	exit 1
}
while IFS= read -r file; do
	[[ -f $file ]] || {
		echo "sync-user-data: $template embeds $file, which does not exist" >&2
		exit 1
	}
done < <(sed -n 's/^ *- | # verbatim: \([^ ]*\)$/\1/p' "$template")

tmp=$(mktemp "$template.XXXXXX")
trap 'rm -f "$tmp"' EXIT
awk '
	# A marked block: print its header, then the file, indented two spaces more
	# than the dash, then skip the old content (lines indented more than the dash).
	/^ *- \| # verbatim: [^ ]+$/ {
		print
		indent = $0; sub(/-.*/, "", indent)
		file = $0; sub(/.*# verbatim: /, "", file)
		strip = file ~ /\.sh$/; n = 0; heredoc = ""; dash = 0
		while ((getline line < file) > 0) {
			n++
			if (heredoc != "") {
				probe = line
				if (dash) sub(/^\t+/, "", probe)
				if (probe == heredoc) heredoc = ""
			} else {
				if (strip && n > 1 && (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/)) continue
				if (strip && match(line, /(^|[^<])<<-?[ \t]*["\047]?[A-Za-z_][A-Za-z_0-9]*/)) {
					word = substr(line, RSTART, RLENGTH)
					sub(/^[^<]?<</, "", word)
					dash = (word ~ /^-/)
					gsub(/[- \t"\047]/, "", word)
					heredoc = word
				}
			}
			print (line == "" ? "" : indent "  " line)
		}
		close(file)
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
