#!/usr/bin/env bash
# Fetch Apache Kafka's broker jars (with their dependencies) for the integration tests that need a real broker.
#
#   bash .ci/fetch-kafka.sh            # into ${STREAMREC_KAFKA_LIBS:-$HOME/.cache/streamrec/kafka-4.4.0/libs}
#
# Idempotent: does nothing when the folder already holds a complete copy (marked by a stamp file naming the pom's
# checksum, so editing .ci/kafka/pom.xml fetches again). Without java or mvn it prints why and exits 0: the tests
# that need the broker then skip, saying how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."

LIBS=${STREAMREC_KAFKA_LIBS:-$HOME/.cache/streamrec/kafka-4.4.0/libs}
POM=.ci/kafka/pom.xml

for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch-kafka: $tool not found; the tests that need Apache Kafka will be skipped" >&2
    exit 0
  fi
done

wanted=$(sha256sum "$POM" | cut -d' ' -f1)
stamp="$LIBS/.fetched-from-pom"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  echo "fetch-kafka: $LIBS is up to date"
  exit 0
fi

# Copy into a fresh folder next to the target and swap it in at the end, so an interrupted fetch never leaves a
# half-filled folder that looks complete.
mkdir -p "$(dirname "$LIBS")"
staging=$(mktemp -d "$(dirname "$LIBS")/.libs-XXXXXX")
trap 'rm -rf "$staging"' EXIT
mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DoutputDirectory="$staging" -DincludeScope=runtime
echo "$wanted" >"$staging/.fetched-from-pom"
rm -rf "$LIBS"
mv "$staging" "$LIBS"
trap - EXIT
echo "fetch-kafka: $(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS"
