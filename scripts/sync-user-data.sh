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
# script (*.sh) is copied without its comment-only lines and blank lines (EC2 allows
# 16 KB of user data, and the comments are for people reading the file); every other
# line is copied byte for byte. Kept as they are: the first line (the shebang), every
# line of a here-document (<<WORD, <<-WORD, <<'WORD', <<"WORD", <<\WORD), and the line
# after one that ends in a backslash (a continuation, where '#' starts no comment).
# Then the copy is checked: bash must read the same code from it as from the file
# (bash's own rendering of both, which leaves comments and layout out, must be equal);
# if it does not (say, a line starting with '#' inside a multi-line quoted string),
# the script refuses and changes nothing. test/template_userdata_test.go makes the
# same check of the template.
set -euo pipefail

template=${1:-template.yaml}
[[ -f $template ]] || {
	echo "sync-user-data: $template not found" >&2
	exit 1
}

# reprint FILE: bash's rendering of FILE's code (as the body of a function, never run).
reprint() {
	bash -c 'eval "__slotkeeper_whole() {
$(cat "$1")
}" && declare -f __slotkeeper_whole' reprint "$1"
}

# strip FILE: FILE without its comment-only and blank lines (see above).
strip() {
	awk '
		# opener: the word of the here-document this line opens ("" none); sets dash.
		function opener(line,   i, rest, c) {
			while ((i = index(line, "<<")) > 0) {
				c = substr(line, i + 2, 1)
				if ((i > 1 && substr(line, i - 1, 1) == "<") || c == "<") { # <<< is a here-string
					line = substr(line, i + 3)
					continue
				}
				rest = substr(line, i + 2)
				dash = 0
				if (substr(rest, 1, 1) == "-") { dash = 1; rest = substr(rest, 2) }
				sub(/^[ \t]*/, "", rest)
				c = substr(rest, 1, 1)
				if (c == "\\" || c == "\"" || c == q) rest = substr(rest, 2)
				if (match(rest, /^[A-Za-z_][A-Za-z_0-9]*/)) return substr(rest, 1, RLENGTH)
				line = rest
			}
			return ""
		}
		{
			line = $0
			if (heredoc != "") {
				probe = line
				if (hdash) sub(/^\t+/, "", probe)
				if (probe == heredoc) heredoc = ""
				print line
				next
			}
			if (NR > 1 && !cont && (line ~ /^[ \t]*#/ || line ~ /^[ \t]*$/)) next
			print line
			# A line ending in an odd number of backslashes continues on the next.
			cont = match(line, /\\+$/) && RLENGTH % 2 == 1
			word = opener(line)
			if (word != "") { heredoc = word; hdash = dash }
		}
	' q="'" "$1"
}

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT
n=0
copies=()
while IFS= read -r file; do
	[[ -f $file ]] || {
		echo "sync-user-data: $template embeds $file, which does not exist" >&2
		exit 1
	}
	n=$((n + 1))
	copy=$tmpdir/$n
	if [[ $file == *.sh ]]; then
		strip "$file" >"$copy"
		if ! bash -n "$copy" 2>/dev/null || [[ $(reprint "$file") != "$(reprint "$copy")" ]]; then
			echo "sync-user-data: stripping the comments of $file would change what bash reads from it" \
				"(a line starting with '#' inside a multi-line string?); $template is unchanged" >&2
			exit 1
		fi
	else
		cat "$file" >"$copy"
	fi
	copies+=("$file=$copy")
done < <(sed -n 's/^ *- | # verbatim: \([^ ]*\)$/\1/p' "$template")

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
	/^ *- \| # verbatim: [^ ]+$/ {
		print
		indent = $0; sub(/-.*/, "", indent)
		file = $0; sub(/.*# verbatim: /, "", file)
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
