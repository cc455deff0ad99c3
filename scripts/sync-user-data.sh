#!/usr/bin/env bash
# Copy the broker files into the user data of the broker launch template.
#
# Usage: scripts/sync-user-data.sh [TEMPLATE]   (default template.yaml)
#
# CloudFormation cannot read files, so the launch template's user data in
# template.yaml carries deploy/broker-bootstrap.sh and deploy/cloudwatch-agent.json
# verbatim, each as a YAML block marked
#
#     - | # verbatim: deploy/broker-bootstrap.sh
#
# This script rewrites every such block from the file it names (run it from the
# repository root after editing either file). test/template_test.go fails while a
# block differs from its file.
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
		while ((getline line < file) > 0) print (line == "" ? "" : indent "  " line)
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
