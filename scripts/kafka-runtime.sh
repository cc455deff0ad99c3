#!/usr/bin/env bash
# Fetch Apache Kafka's server runtime for the tests and the demo: kafka_2.13 and its
# runtime dependencies, pinned in scripts/kafka-runtime.pom.xml, from Maven Central.
#
# Usage: scripts/kafka-runtime.sh        (make kafka-runtime)
#
# The jars land in $SLOTKEEPER_KAFKA_CACHE/<version>/lib (default .cache/kafka, which
# git ignores). Maven checks each download against Central's checksums (-C); then
# every jar must match its SHA-256 in scripts/kafka-runtime.sha256, and no other jar
# may be there. A runtime already in place is only re-verified (well under a second),
# so running this again is cheap; a cache that fails verification is fetched anew.
# Needs java (17+) and mvn (3.6.3+).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pom=$root/scripts/kafka-runtime.pom.xml
sums=$root/scripts/kafka-runtime.sha256
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
[[ -n $version ]] || {
	echo "kafka-runtime: no <kafka.version> in $pom" >&2
	exit 1
}
cache=${SLOTKEEPER_KAFKA_CACHE:-$root/.cache/kafka}
dest=$cache/$version

# verify DIR: every pinned jar is in DIR/lib with its SHA-256, and nothing else is.
verify() {
	local lib=$1/lib want have
	[[ -d $lib ]] || return 1
	want=$(grep -v '^#' "$sums" | awk '{ print $2 }' | sort)
	have=$(cd "$lib" && find . -maxdepth 1 -type f -name '*.jar' -printf '%f\n' | sort)
	[[ $want == "$have" ]] || return 1
	(cd "$lib" && grep -v '^#' "$sums" | sha256sum --quiet --strict -c -) >/dev/null 2>&1
}

if verify "$dest"; then
	echo "kafka-runtime: Apache Kafka $version is in $dest (verified)"
	exit 0
fi

for tool in java mvn; do
	command -v "$tool" >/dev/null || {
		echo "kafka-runtime: $tool not found; Apache Kafka's runtime needs Java 17+ and Maven to fetch it" >&2
		exit 1
	}
done

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "kafka-runtime: fetching Apache Kafka $version from Maven Central"
start=$SECONDS
mvn -B -q -C -f "$pom" dependency:copy-dependencies \
	-DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1 || {
	cat "$tmp/mvn.log" >&2
	echo "kafka-runtime: Maven could not fetch the runtime (log above)" >&2
	exit 1
}
if ! verify "$tmp"; then
	(cd "$tmp/lib" && grep -v '^#' "$sums" | sha256sum --strict -c - 2>&1 | grep -v ': OK$') >&2 || true
	echo "kafka-runtime: the fetched jars do not match $sums" >&2
	exit 1
fi
rm -f "$tmp/mvn.log"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "kafka-runtime: Apache Kafka $version verified and cached in $dest ($((SECONDS - start)) s)"
