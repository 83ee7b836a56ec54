#!/usr/bin/env bash
# Benchmark iggy-broker on this machine: startup time, idle RSS, then produce/consume of
# 1000-byte messages in batches of 1000 for 1 and 4 producers, 1 and 8 partitions, with
# fsync=never and fsync=always. Every scenario moves 1000 batches (1 GB of payload).
# Usage: broker/bench/run.sh [--quick]   (--quick: 100 batches per scenario)
set -euo pipefail
cd "$(dirname "$0")/../.."
BROKER=./target/release/iggy-broker
LOAD=./target/release/iggy-load
BATCHES=1000
[ "${1:-}" = "--quick" ] && BATCHES=100
TCP=127.0.0.1:18090
HTTP=127.0.0.1:13000
WORK=$(mktemp -d)
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

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$PID/status; }
hwm_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$PID/status; }

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
start_broker never
echo "first start to accepting connections (includes root password hashing): ${STARTUP_MS} ms"
sleep 1
echo "idle RSS: $(rss_mib) MiB"
restart_timing
sleep 1
echo "idle RSS after restart: $(rss_mib) MiB"

for fsync in never always; do
  kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null || true
  start_broker $fsync
  for producers in 1 4; do
    for partitions in 1 8; do
      # Start each scenario with no dirty pages from the previous one: on a VM, background
      # writeback of earlier runs otherwise throttles this run's writes unpredictably.
      sync; sleep 1
      "$LOAD" --address $TCP --producers $producers --partitions $partitions \
        --batches $BATCHES --batch-size 1000 --message-size 1000 --label "fsync=$fsync"
    done
  done
  echo "broker RSS after fsync=$fsync runs: $(rss_mib) MiB (peak $(hwm_mib) MiB)"
done
