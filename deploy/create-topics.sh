#!/usr/bin/env bash
# Create streamrec's topics on Apache Kafka. Usage: BOOTSTRAP=broker:9092 PARTITIONS=24 RF=3 ./create-topics.sh
# MIN_ISR (default 2) is min.insync.replicas of the topics a worker writes with acks=all; a single-broker cluster
# (deploy/compose.yaml) needs MIN_ISR=1 RF=1, or every write would be refused.
# On a secured cluster (TLS, SASL) add COMMAND_CONFIG=client.properties: a Kafka client properties file
# (security.protocol, ssl.truststore.*, sasl.mechanism, sasl.jaas.config ...) handed to kafka-topics.sh as
# --command-config; see deploy/README.md.
set -euo pipefail
BOOTSTRAP=${BOOTSTRAP:?set BOOTSTRAP=host:port}
PARTITIONS=${PARTITIONS:-24}
RF=${RF:-3}
MIN_ISR=${MIN_ISR:-2}
KT=${KAFKA_TOPICS:-kafka-topics.sh}
SECURITY=()
if [[ -n "${COMMAND_CONFIG:-}" ]]; then
  if [[ ! -r "$COMMAND_CONFIG" ]]; then
    echo "create-topics.sh: COMMAND_CONFIG=$COMMAND_CONFIG is not a readable file" >&2
    exit 2
  fi
  SECURITY=(--command-config "$COMMAND_CONFIG")
fi

create() {
  "$KT" --bootstrap-server "$BOOTSTRAP" "${SECURITY[@]}" --create --if-not-exists --topic "$1" \
    --partitions "$2" --replication-factor "$RF" "${@:3}"
}
create events "$PARTITIONS" --config retention.ms=604800000 --config min.insync.replicas=$MIN_ISR
# Erasure: a `forget` command writes tombstones to the state and recommendation topics; max.compaction.lag.ms bounds
# how long the records they supersede may stay (1 day), delete.retention.ms how long the tombstones stay (1 day).
create recommendations "$PARTITIONS" --config cleanup.policy=compact,delete --config retention.ms=86400000 \
  --config max.compaction.lag.ms=86400000 --config delete.retention.ms=86400000
create events.dlq 3 --config retention.ms=1209600000
# Same partition count as `events`: a user's state lives in the partition number of the user's events.
create streamrec.user-state "$PARTITIONS" --config cleanup.policy=compact --config min.insync.replicas=$MIN_ISR \
  --config max.compaction.lag.ms=86400000 --config delete.retention.ms=86400000
# The catalog: every worker reads all of it from the beginning at start-up, so keep it compacted (latest record
# per item); a handful of partitions is plenty.
create items 6 --config cleanup.policy=compact --config min.insync.replicas=$MIN_ISR
# What each worker's events add to trending, co-visitation and exposure: every worker reads it from the beginning
# at start-up (a restarted worker gets the shop's aggregates back) and follows it. Additions, not keyed state: kept
# for a time (aggregates_retention_s), not compacted.
create streamrec.aggregates 6 --config retention.ms=172800000 --config min.insync.replicas=$MIN_ISR
