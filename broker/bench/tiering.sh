#!/usr/bin/env bash
# Reading old data back from the object store: one producer writes 1000-byte messages in
# batches of 1000 to one partition with 16 MiB segments, the broker uploads sealed segments to
# a local S3-compatible server (s3s-fs) and evicts its local copies one second after upload;
# then one consumer reads everything from offset 0 — all of it below the local window, so every
# poll is served from S3 through the read-ahead cache. Compared with the same run without
# tiering (every poll local). Also prints how long a sealed segment took to reach S3
# (upload lag) and the store's GET latency histogram. Then a consumer tailing the producer,
# with L1 (the newest batches in memory) and without. Skips when s3s-fs is not installed
# (cargo install s3s-fs@0.14.1 --features binary).
# Usage: broker/bench/tiering.sh [--quick]   (--quick: 100 batches)
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCHES=1000
[ "${1:-}" = "--quick" ] && BATCHES=100
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "tiering bench skipped: s3s-fs not found (cargo install s3s-fs@0.14.1 --features binary)"
  exit 0
fi
. broker/bench/lib.sh tiering

mkdir -p "$WORK/s3/bench"
s3s-fs --host 127.0.0.1 --port 29000 --access-key BENCHKEY --secret-key bench-secret \
  "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
PIDS+=($!)
wait_port 29000

metric() { curl -fs http://127.0.0.1:23100/metrics | awk -v n="$1" '$1 == n {print $2}'; }

scenario() { # label consume-after-ms|tail broker-env...
  local label=$1 after=$2 tail=
  shift 2
  if [ "$after" = tail ]; then after=0; tail=--tail; fi
  rm -rf "$WORK/data"
  env IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=127.0.0.1:28190 IGGY_HTTP_ADDRESS=127.0.0.1:23100 \
    IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_STORAGE_FSYNC=never IGGY_LOGGING_LEVEL=warn \
    IGGY_STORAGE_SEGMENT_SIZE="16 MiB" "$@" "$BROKER" >"$WORK/broker.log" 2>&1 &
  local pid=$!
  wait_port 28190
  # The consumer starts once every sealed segment is uploaded and evicted (checked below).
  "$LOAD" --address 127.0.0.1:28190 --producers 1 --partitions 1 --batches "$BATCHES" \
    --batch-size 1000 --message-size 1000 --consume-after-ms "$after" $tail --label "tiering=$label" &
  local load=$!
  if [ "$label" = s3 ]; then
    local started=$SECONDS
    until [ "$(metric iggy_tiering_uploaded_segments_total)" -ge $((BATCHES / 16)) ] 2>/dev/null \
      && [ "$(metric iggy_tiering_upload_lag_segments)" = 0 ]; do sleep 0.2; done
    echo "tiering=s3 every sealed segment in S3 within $((SECONDS - started)) s of the first send"
  fi
  wait "$load"
  echo "tiering=$label broker RSS: $(rss_mib "$pid") MiB"
  echo "tiering=$label broker CPU: $(cpu_seconds "$pid") s"
  curl -fs http://127.0.0.1:23100/metrics | grep -E '^iggy_tiering_(l1_hits|uploaded_segments|evicted_segments|remote_reads|cache_hits|store_read_seconds_(sum|count|bucket\{le="0.(01|05|1)"\}))' || true
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

scenario local 0
scenario s3 "${CONSUME_AFTER_MS:-15000}" IGGY_TIERING_S3_BUCKET=bench IGGY_TIERING_S3_ENDPOINT=http://127.0.0.1:29000 \
  IGGY_TIERING_S3_FORCE_PATH_STYLE=true IGGY_TIERING_S3_ACCESS_KEY_ID=BENCHKEY \
  IGGY_TIERING_S3_SECRET_ACCESS_KEY=bench-secret IGGY_TIERING_LOCAL_RETENTION=1s \
  IGGY_TIERING_INTERVAL=100ms

# L1: a consumer reading at the end while the producer writes (--tail), with the newest batches
# in memory (the default 64 MiB) and without (every poll a file read and a checksum pass).
scenario tail-l1 tail
scenario tail-no-l1 tail IGGY_TIERING_L1_SIZE=0
