#!/usr/bin/env bash
# What OpenTelemetry costs the broker: one producer and one consumer, one partition, 1000-byte
# messages in batches of 1000, fsync=never, three ways —
#   off:       nothing configured (the default);
#   off+ctx:   nothing configured, every message carries a traceparent header;
#   on+ctx:    traces (every request sampled), logs and metrics exported over gRPC to a local
#              collector (rotel, discarding what it receives), every message with a traceparent
#              (the send span takes it as parent, the poll span links it);
# and the broker's RSS after each. Skips with a message when rotel is not installed
# (pip install rotel==0.0.1a15).
# Usage: broker/bench/telemetry.sh [--quick]   (--quick: 100 batches per scenario)
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCHES=1000
[ "${1:-}" = "--quick" ] && BATCHES=100
ROTEL=${ROTEL_AGENT:-$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null || true)}
if [ -z "$ROTEL" ] || [ ! -x "$ROTEL" ]; then
  echo "telemetry bench skipped: rotel-agent not found (pip install rotel==0.0.1a15, or set ROTEL_AGENT)"
  exit 0
fi
. broker/bench/lib.sh telemetry

"$ROTEL" start --otlp-grpc-endpoint 127.0.0.1:24317 --otlp-http-endpoint 127.0.0.1:24318 \
  --exporter blackhole >"$WORK/rotel.log" 2>&1 &
ROTEL_PID=$!
wait_port 24317

scenario() { # label load-flags broker-env...
  local label=$1 flags=$2
  shift 2
  rm -rf "$WORK/data"
  env IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=127.0.0.1:28090 IGGY_HTTP_ADDRESS=127.0.0.1:23000 \
    IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_STORAGE_FSYNC=never IGGY_LOGGING_LEVEL=warn \
    "$@" "$BROKER" >"$WORK/broker.log" 2>&1 &
  PIDS=($!)
  wait_port 28090
  for run in $(seq "${REPEAT:-1}"); do
    sync; sleep 1
    # shellcheck disable=SC2086
    "$LOAD" --address 127.0.0.1:28090 --producers 1 --partitions 1 --batches "$BATCHES" \
      --batch-size 1000 --message-size 1000 $flags --label "telemetry=$label run=$run"
  done
  echo "telemetry=$label broker RSS: $(rss_mib "${PIDS[0]}") MiB"
  stop_all
}

scenario off ""
scenario off+ctx "--traceparent"
scenario on+ctx "--traceparent" OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:24317 \
  OTEL_EXPORTER_OTLP_PROTOCOL=grpc OTEL_TRACES_SAMPLER=always_on
kill -TERM "$ROTEL_PID" 2>/dev/null || true
wait "$ROTEL_PID" 2>/dev/null || true
