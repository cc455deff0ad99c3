#!/usr/bin/env bash
# Check template.yaml with the AWS SAM CLI, offline: `sam validate --lint`, then
# `sam build` into a temporary directory, and a linux/arm64 bootstrap for every
# functions/<name>/main.go under its logical id (<Name>Function). Run by `make test`.
#
# Usage: scripts/sam-check.sh [VENV_DIR]   (default .venv, which holds the pinned sam)
#
# Nothing leaves the machine: telemetry is off, the instance-metadata lookup for a
# region is off, and the build runs the Makefile's build-<LogicalId> targets (Go, from
# the module cache). The build goes to a temporary directory, so concurrent runs do
# not share .aws-sam/.
#
# Linking five arm64 binaries takes a while, so a successful check leaves a stamp
# (.aws-sam/sam-check.stamp): the SHA-256 of everything the check reads (the
# template, samconfig.toml, the Makefile, this script, go.mod, go.sum, every non-test
# Go file, the SAM CLI version). While that is unchanged the check is skipped;
# SAM_CHECK_FORCE=1 runs it anyway.
set -euo pipefail

venv=${1:-.venv}
sam=$venv/bin/sam
if [[ ! -x $sam ]]; then
	echo "sam-check: $sam not found; run 'make venv'" >&2
	exit 1
fi
export SAM_CLI_TELEMETRY=0 AWS_EC2_METADATA_DISABLED=true AWS_REGION=${AWS_REGION:-us-east-1}

stamp=.aws-sam/sam-check.stamp
inputs() {
	"$sam" --version
	find . \( -path ./.venv -o -path ./.aws-sam -o -path ./build -o -path ./.git \) -prune -o \
		-type f \( -name '*.go' ! -name '*_test.go' \) -print |
		cat - <(printf '%s\n' ./template.yaml ./samconfig.toml ./Makefile ./scripts/sam-check.sh ./go.mod ./go.sum) |
		LC_ALL=C sort | while IFS= read -r f; do
		printf '%s ' "$f"
		sha256sum <"$f"
	done
}
digest=$(inputs | sha256sum | cut -d' ' -f1)
if [[ ${SAM_CHECK_FORCE:-} != 1 && -f $stamp && $(<"$stamp") == "$digest" ]]; then
	echo "sam-check: nothing sam reads changed since the last successful check; skipped (SAM_CHECK_FORCE=1 runs it)"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# elapsed START: seconds since START (an EPOCHREALTIME value), to the millisecond.
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

start=$EPOCHREALTIME
"$sam" validate --lint --template-file template.yaml
echo "sam-check: sam validate --lint took $(elapsed "$start")s"

start=$EPOCHREALTIME
if ! "$sam" build --template-file template.yaml --build-dir "$work/build" \
	--no-cached --parallel --build-in-source >"$work/build.log" 2>&1; then
	cat "$work/build.log" >&2
	echo "sam-check: sam build failed" >&2
	exit 1
fi
echo "sam-check: sam build took $(elapsed "$start")s"

failed=0
for main in functions/*/main.go; do
	name=$(basename "$(dirname "$main")")
	id="${name^}Function"
	bin=$work/build/$id/bootstrap
	# An ELF file (7f 45 4c 46) for machine 183, AArch64 (e_machine, at byte 18).
	if [[ ! -x $bin ]]; then
		echo "sam-check: sam build made no executable $id/bootstrap" >&2
		failed=1
	elif [[ $(od -An -tx1 -N4 "$bin" | tr -d ' \n') != 7f454c46 || $(od -An -tu2 -j18 -N2 "$bin" | tr -d ' \n') != 183 ]]; then
		echo "sam-check: $id/bootstrap is not a linux/arm64 executable" >&2
		failed=1
	else
		echo "sam-check: $id/bootstrap: linux/arm64, $(($(stat -c %s "$bin") / 1024)) KiB"
	fi
done
if ((failed == 0)); then
	mkdir -p "$(dirname "$stamp")"
	printf '%s\n' "$digest" >"$stamp"
fi
exit "$failed"
