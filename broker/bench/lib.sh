# Shared by the benchmark scripts (sourced, after `cd` to the repository root): the binaries,
# a work directory under BENCH_DIR (default ./target/bench) removed on exit, the processes a
# script started (PIDS) stopped on exit, and small probes.
# Usage: . broker/bench/lib.sh <work-directory-prefix>
BROKER=./target/release/iggy-broker
LOAD=${LOAD:-./target/release/iggy-load}
FLOOR_BIN=./target/release/store-floor
mkdir -p "${BENCH_DIR:-./target/bench}"
WORK=$(mktemp -d "${BENCH_DIR:-./target/bench}/$1.XXXXXX")
PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

wait_port() { until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do sleep 0.01; done; }
wait_ready() { until curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1; do sleep 0.01; done; }
cpu_seconds() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
# Jiffies the whole machine spent busy (user, nice, system, irq, softirq, steal) and in all, for
# how many of its cores a run kept busy: the load generator and the kernel's share of loopback
# traffic count too, which no process's CPU time shows whole.
machine_jiffies() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# Cores busy between two `machine_jiffies` readings.
cores_busy() { # "busy total" "busy total"
  awk -v a="$1" -v b="$2" -v n="$(nproc)" 'BEGIN { split(a, x, " "); split(b, y, " ");
    if (y[2] > x[2]) printf "%.2f", n * (y[1] - x[1]) / (y[2] - x[2]); else printf "n/a" }'
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
# The three-member ring on loopback the cluster scripts use: member n serves clients on
# 28n90, replicates on 28n91 and answers HTTP on 2n300.
write_ring() {
  cat > "$WORK/ring.json" <<JSON
{"cluster_id": "bench", "epoch": 0, "members": [
  {"id": 0, "position": 0, "address": "127.0.0.1:28091", "client_address": "127.0.0.1:28090"},
  {"id": 1, "position": 1, "address": "127.0.0.1:28191", "client_address": "127.0.0.1:28190"},
  {"id": 2, "position": 2, "address": "127.0.0.1:28291", "client_address": "127.0.0.1:28290"}]}
JSON
}
# Starts member n of that ring in the background (its PID is then in $!), data in
# $WORK/member-n, output appended to $WORK/member-n.log; more settings as VAR=value arguments.
start_member() { # n [VAR=value...]
  local n=$1
  shift
  env IGGY_SYSTEM_PATH="$WORK/member-$n" IGGY_TCP_ADDRESS="127.0.0.1:28${n}90" \
    IGGY_HTTP_ADDRESS="127.0.0.1:2${n}300" IGGY_REPLICATION_ADDRESS="127.0.0.1:28${n}91" \
    IGGY_CLUSTER_RING_FILE="$WORK/ring.json" IGGY_CLUSTER_MEMBER_ID="$n" \
    IGGY_REPLICATION_SECRET=bench-replication-secret \
    IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_LOGGING_LEVEL=warn \
    "$@" "$BROKER" >>"$WORK/member-$n.log" 2>&1 &
}
