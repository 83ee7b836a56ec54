#!/usr/bin/env bash
# Benchmark iggy-broker on this machine: startup time, idle RSS, then produce/consume of
# 1000-byte messages in batches of 1000 for 1 and 4 producers, 1 and 8 partitions, with
# fsync=never and fsync=always. Every scenario moves 1000 batches (1 GB of payload).
# Usage: broker/bench/run.sh [--quick]   (--quick: 100 batches per scenario)
# REPEAT=3 runs every scenario three times (this VM's I/O and CPU are noisy: report medians).
# BENCH_DIR=/dev/shm broker/bench/run.sh  puts the data on tmpfs, taking the disk out of the
# measurement (what the broker itself costs); the default is a directory on the work disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
BROKER=./target/release/iggy-broker
LOAD=./target/release/iggy-load
BATCHES=1000
[ "${1:-}" = "--quick" ] && BATCHES=100
TCP=127.0.0.1:18090
HTTP=127.0.0.1:13000
mkdir -p "${BENCH_DIR:-./target/bench}"
WORK=$(mktemp -d "${BENCH_DIR:-./target/bench}/run.XXXXXX")
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

start_broker() { # fsync policy
  rm -rf "$WORK/data"
  local t0=$(date +%s%N)
  IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=$TCP IGGY_HTTP_ADDRESS=$HTTP \
    IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_STORAGE_FSYNC="$1" IGGY_LOGGING_LEVEL=warn \
    "$BROKER" >"$WORK/broker.log" 2>&1 &
  PID=$!
  until (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null; do sleep 0.001; done
  STARTUP_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
}

restart_timing() { # second start on an existing data dir: what a pod restart costs
  kill -TERM $PID; wait $PID || true
  local t0=$(date +%s%N)
  IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=$TCP IGGY_HTTP_ADDRESS=$HTTP IGGY_LOGGING_LEVEL=warn \
    "$BROKER" >"$WORK/broker.log" 2>&1 &
  PID=$!
  until (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null; do sleep 0.001; done
  echo "restart to accepting connections (existing data dir): $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

# Consumer groups against standalone consumers doing the same work (Next + auto-commit), then
# producer latency while the retention cleaner deletes segments under it.
groups_and_retention() {
  kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true
  start_broker never
  for run in $(seq "${REPEAT:-1}"); do
    sync; sleep 1
    "$LOAD" --address $TCP --producers 1 --partitions 8 --consumers 4 --batches $BATCHES --commit --label "standalone run=$run"
    sync; sleep 1
    "$LOAD" --address $TCP --producers 1 --partitions 8 --consumers 4 --batches $BATCHES --group --label "group run=$run"
  done
  # Producer latency with 16 MiB segments, without and then with a cleaner deleting segments
  # under it (1 s expiry, a pass every 250 ms): deletions must not stall sends.
  for expiry in none 1s; do
    kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true
    rm -rf "$WORK/data"
    IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=$TCP IGGY_HTTP_ADDRESS=$HTTP \
      IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_LOGGING_LEVEL=info \
      IGGY_STORAGE_SEGMENT_SIZE="16 MiB" IGGY_RETENTION_MESSAGE_EXPIRY=$expiry IGGY_RETENTION_CLEANER_INTERVAL=250ms \
      "$BROKER" >"$WORK/broker.log" 2>&1 &
    PID=$!
    until (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null; do sleep 0.001; done
    for run in $(seq "${REPEAT:-1}"); do
      sync; sleep 1
      "$LOAD" --address $TCP --producers 1 --partitions 1 --batches $((BATCHES * 3)) --no-consume \
        --label "retention expiry=$expiry run=$run"
    done
    echo "segments deleted by the cleaner (expiry=$expiry): $(grep -o 'segments=[0-9]*' "$WORK/broker.log" | awk -F= '{s+=$2} END {print s+0}')"
  done
}

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$PID/status; }
hwm_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$PID/status; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); data in $WORK"
# The ceiling for appends: what a plain sequential 1 GB write to the same filesystem gets now.
sync; sleep 1
echo "baseline dd 1 GB write to the data filesystem: $(dd if=/dev/zero of="$WORK/dd" bs=1M count=1000 2>&1 | awk -F, '/copied/ {print $NF}')"
echo "baseline dd 1 GB write + fdatasync: $(dd if=/dev/zero of="$WORK/dd" bs=1M count=1000 conv=fdatasync 2>&1 | awk -F, '/copied/ {print $NF}')"
rm -f "$WORK/dd"
start_broker never
echo "first start to accepting connections (includes root password hashing): ${STARTUP_MS} ms"
sleep 1
echo "idle RSS: $(rss_mib) MiB"
restart_timing
sleep 1
echo "idle RSS after restart: $(rss_mib) MiB"

# SKIP_MAIN=1 runs only the consumer-group and retention scenarios.
FSYNC_MODES="never always"
[ "${SKIP_MAIN:-}" = 1 ] && FSYNC_MODES=""
for fsync in $FSYNC_MODES; do
  kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true
  start_broker $fsync
  for producers in 1 4; do
    for partitions in 1 8; do
      # Start each scenario with no dirty pages from the previous one: on a VM, background
      # writeback of earlier runs otherwise throttles this run's writes unpredictably.
      for run in $(seq "${REPEAT:-1}"); do
        sync; sleep 1
        "$LOAD" --address $TCP --producers $producers --partitions $partitions \
          --batches $BATCHES --batch-size 1000 --message-size 1000 --label "fsync=$fsync run=$run"
      done
    done
  done
  echo "broker RSS after fsync=$fsync runs: $(rss_mib) MiB (peak $(hwm_mib) MiB)"
done
[ "${SKIP_GROUPS:-}" = 1 ] || groups_and_retention

# Mid-size batches (16 × 1000 B) from a client that leaves Nagle's algorithm on, as Iggy's SDKs
# do by default: its payload waits for the header's acknowledgement, which the broker sends at
# once (src/net/quickack.rs) instead of after Linux's delayed-ACK timer (~40 ms a request).
kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true
start_broker never
for run in $(seq "${REPEAT:-1}"); do
  for nagle in "" --nagle; do
    "$LOAD" --address $TCP --producers 1 --partitions 1 --batches 2000 --batch-size 16 \
      --message-size 1000 --no-consume $nagle --label "16 KB batches${nagle:+, nagle on} run=$run"
  done
done

# Message deduplication (docs/broker.md): off, then on with producers that let the broker pick
# ids (no window is built) and with producers whose every message carries an id of its own
# (each one looked up and remembered; none dropped). SKIP_DEDUP=1 leaves it out.
if [ "${SKIP_DEDUP:-}" != 1 ]; then
  for dedup in false true; do
    kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true
    rm -rf "$WORK/data"
    IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=$TCP IGGY_HTTP_ADDRESS=$HTTP \
      IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_LOGGING_LEVEL=warn \
      IGGY_MESSAGE_DEDUPLICATION_ENABLED=$dedup "$BROKER" >"$WORK/broker.log" 2>&1 &
    PID=$!
    until (exec 3<>/dev/tcp/127.0.0.1/18090) 2>/dev/null; do sleep 0.001; done
    for run in $(seq "${REPEAT:-1}"); do
      for ids in "" --ids; do
        sync; sleep 1
        "$LOAD" --address $TCP --producers 1 --partitions 1 --batches $BATCHES --no-consume $ids \
          --label "deduplication=$dedup${ids:+, every message with an id} run=$run"
      done
    done
    echo "broker RSS after deduplication=$dedup: $(rss_mib) MiB (peak $(hwm_mib) MiB)"
  done
fi
