#!/usr/bin/env bash
# How long a restart takes, and how much the boot re-verifies, with data on disk: a single node
# holding 5,000 batches of 1000 × 100-byte messages (860 MB stored), then a backup of a
# three-replica cluster holding 3,000 (490 MB). Each is killed with SIGKILL twice: first before
# any running checkpoint covered the data (storage.checkpoint_interval = 1h, so only the pass
# each boot starts with runs), which verifies everything written since the last checkpoint;
# then again once the first boot's pass recorded what it verified. Last, a clean stop and start.
# Times are from starting the process to accepting connections (single node) or answering
# /health and /ready (backup).
# Usage: broker/bench/restart.sh [--quick]   (--quick: a tenth of the data)
set -euo pipefail
cd "$(dirname "$0")/../.."
SINGLE_BATCHES=5000
CLUSTER_BATCHES=3000
[ "${1:-}" = "--quick" ] && SINGLE_BATCHES=500 && CLUSTER_BATCHES=300
. broker/bench/lib.sh restart

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
metric_of() { # http-port name
  curl -fs "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n {print $2}'
}
# Waits until the boot's first checkpoint pass is done, so the next kill finds it recorded.
wait_pass() { # http-port
  until [ "$(metric_of "$1" iggy_checkpoint_passes_total)" -ge 1 ] 2>/dev/null; do sleep 0.01; done
}
# Runs a started broker's SIGKILL-and-restart twice, then a clean restart.
restarts() { # label index http-port start-function wait-function
  local label=$1 n=$2 http=$3 start=$4 wait=$5 t0
  for round in "before a running checkpoint" "after one"; do
    # A second after the restart: a member killed while it still catches up also repairs
    # its log at the next boot, which is not what this measures.
    [ "$round" = "after one" ] && wait_pass "$http" && sleep 1
    kill -9 "${PIDS[$n]}"; wait "${PIDS[$n]}" 2>/dev/null || true
    t0=$(date +%s%N); "$start"; "$wait"
    echo "$label, kill -9 $round: $(ms_since "$t0") ms ($WAITED), boot verified" \
      "$(metric_of "$http" iggy_boot_verified_bytes) bytes, RSS $(rss_mib "${PIDS[$n]}") MiB"
  done
  kill -TERM "${PIDS[$n]}"; wait "${PIDS[$n]}" 2>/dev/null || true
  t0=$(date +%s%N); "$start"; "$wait"
  echo "$label, clean stop: $(ms_since "$t0") ms ($WAITED), boot verified" \
    "$(metric_of "$http" iggy_boot_verified_bytes) bytes"
}

start_single() {
  IGGY_SYSTEM_PATH="$WORK/single" IGGY_TCP_ADDRESS=127.0.0.1:28090 IGGY_HTTP_ADDRESS=127.0.0.1:23000 \
    IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_STORAGE_FSYNC=never \
    IGGY_STORAGE_CHECKPOINT_INTERVAL=1h IGGY_LOGGING_LEVEL=warn \
    "$BROKER" >>"$WORK/single.log" 2>&1 &
  PIDS[0]=$!
}
wait_single() { wait_port 28090; WAITED="accepting connections"; }

start_single; wait_single
"$LOAD" --address 127.0.0.1:28090 --producers 1 --partitions 1 --batches "$SINGLE_BATCHES" \
  --batch-size 1000 --message-size 100 --no-consume --keep | grep -o "msgs=[0-9]* payload_MB/s=[0-9]*"
wait_pass 23000
restarts "single node" 0 23000 start_single wait_single
stop_all

write_ring
start_backup() {
  start_member 2 IGGY_STORAGE_FSYNC=never IGGY_STORAGE_CHECKPOINT_INTERVAL=1h
  PIDS[2]=$!
}
wait_backup() {
  local t0 alive
  t0=$(date +%s%N)
  until curl -fs http://127.0.0.1:22300/health >/dev/null 2>&1; do sleep 0.005; done
  alive=$(ms_since "$t0")
  wait_ready 22300
  WAITED="ready; /health after $alive ms of the wait"
}
for n in 0 1; do
  start_member "$n" IGGY_STORAGE_FSYNC=never IGGY_STORAGE_CHECKPOINT_INTERVAL=1h
  PIDS[$n]=$!
done
start_backup
for n in 0 1 2; do wait_ready "2${n}300"; done
"$LOAD" --address 127.0.0.1:28090 --producers 1 --partitions 1 --batches "$CLUSTER_BATCHES" \
  --batch-size 1000 --message-size 100 --no-consume --keep | grep -o "msgs=[0-9]* payload_MB/s=[0-9]*"
wait_pass 22300
restarts "cluster backup" 2 22300 start_backup wait_backup
