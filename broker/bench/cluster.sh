#!/usr/bin/env bash
# Benchmark a three-replica cluster on loopback against one broker, side by side: produce then
# consume 1000-byte messages in batches of 1000 (one producer, one partition), for each route
# (star, ring, and star with replication.tls) and fsync mode (never, always), with the CPU each broker and the load generator
# used and how many cores the whole machine kept busy; then idle RSS per replica (after a load
# and fresh) and failover time (primary killed → first acknowledged send through the new
# primary), idle and under load. Last, 1000 and then 10,000 partitions written in batches of
# 10 × 100 B by 4 producers, single node against the cluster: the per-request and per-partition
# costs. The produce rates of the clusters as multiples of the single node's in the same run
# close the load part, beside the issue's targets, with the most this machine's cores allow
# the star cluster at its CPU per megabyte (from a produce-only pair of runs), and what the
# least-work replicated store (`store-floor`) reaches on the same cores.
# All brokers and the load generator share this machine's cores.
# Usage: broker/bench/cluster.sh [--quick]   (--quick: 100 batches per scenario, else 600)
# REPEAT=3 runs each scenario three times; BENCH_DIR=/dev/shm puts the data on tmpfs;
# FAILOVER_RUNS (default 5, 2 with --quick) is how many failovers under load are timed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# 600 batches (600 MB a replica): this VM serves the first ~3 GB of fresh page cache fast and
# every page past that about four times slower (a single node slowed from 0.9 to 3.1 ms a batch
# after ~2.8 GB; docs/benchmarks.md, 2026-12-04 "Reclaiming at idle priority"). Three replicas
# store the data three times over, so 1000 batches pushed the cluster's last tenth into the
# slow regime while one broker never reached it. CLUSTER_BATCHES overrides.
BATCHES=${CLUSTER_BATCHES:-600}
SMALL_BATCHES=20000
[ "${1:-}" = "--quick" ] && BATCHES=100 && SMALL_BATCHES=2000
. broker/bench/lib.sh cluster

# Each scenario starts from an empty work directory: the gigabytes an earlier scenario left (on
# tmpfs, in memory) slowed the next one by half on this VM.
clear_data() { rm -rf "$WORK/single" "$WORK"/member-?; }

start_single() { # fsync
  clear_data
  IGGY_SYSTEM_PATH="$WORK/single" IGGY_TCP_ADDRESS=127.0.0.1:28090 IGGY_HTTP_ADDRESS=127.0.0.1:23000 \
    IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy IGGY_STORAGE_FSYNC="$1" IGGY_LOGGING_LEVEL=warn \
    "$BROKER" >"$WORK/single.log" 2>&1 &
  PIDS=($!)
  wait_port 28090
}

start_cluster() { # route fsync [replication.tls, default false]
  write_ring
  clear_data
  for n in 0 1 2; do
    start_member "$n" IGGY_REPLICATION_ROUTE="$1" IGGY_STORAGE_FSYNC="$2" \
      IGGY_REPLICATION_TLS="${3:-false}"
    PIDS+=($!)
  done
  for n in 0 1 2; do wait_ready "2${n}300"; done
}

# Produce rate (msgs/s) of each scenario by label, for the ratios printed at the end.
declare -A PRODUCED
# Its produce p99 (ms), by label.
declare -A PRODUCE_P99
# Cores the whole machine kept busy during each scenario, by label.
declare -A BUSY
# The value of `name=value` on the produce line of iggy-load's output (stdin).
field() { # name
  awk -v name="$1=" '/ produce / { for (i = 1; i <= NF; i++) if (index($i, name) == 1) {
    print substr($i, length(name) + 1) } }'
}
# `a` as a multiple of `b` ("n/a" unless both are positive numbers).
quotient() { # a b
  awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else printf "n/a" }'
}
# `a`'s produce rate as a multiple of `b`'s.
ratio() { # label-a label-b
  quotient "${PRODUCED[$1]:-}" "${PRODUCED[$2]:-}"
}

# One scenario against the client port `$1`, reporting the CPU every started broker used; the
# load is one producer of megabyte batches unless more `iggy-load` arguments follow the label.
measure() { # port label [load arguments]
  local port=$1 label=$2 before=()
  shift 2
  local load=("$@")
  [ ${#load[@]} -gt 0 ] || load=(--producers 1 --partitions 1 --batches "$BATCHES" \
    --batch-size 1000 --message-size 1000)
  for pid in "${PIDS[@]}"; do before+=("$(cpu_seconds "$pid")"); done
  sync; sleep 1
  local out machine_before load_cpu
  machine_before=$(machine_jiffies)
  # `time` reports the load generator's own CPU (user and system) on its line of stderr.
  { TIMEFORMAT='load-cpu %U %S'; time "$LOAD" --address "127.0.0.1:$port" "${load[@]}" \
      --label "$label" >"$WORK/load.out" 2>"$WORK/load.err"; } 2>"$WORK/load.time" ||
    { cat "$WORK/load.err" >&2; return 1; }
  local busy; busy=$(cores_busy "$machine_before" "$(machine_jiffies)")
  BUSY[$label]=$busy
  load_cpu=$(awk '/^load-cpu/ {printf "%.2f", $2 + $3}' "$WORK/load.time")
  out=$(cat "$WORK/load.out")
  echo "$out"
  PRODUCED[$label]=$(field msgs/s <<<"$out")
  PRODUCE_P99[$label]=$(field p99_ms <<<"$out")
  local cpu="" i=0
  for pid in "${PIDS[@]}"; do
    cpu+=" $(awk -v a="${before[$i]}" -v b="$(cpu_seconds "$pid")" 'BEGIN {printf "%.2f", b - a}')s"
    i=$((i + 1))
  done
  echo "  CPU per broker (member 0 = primary):$cpu; load generator ${load_cpu}s; cores busy (whole machine): $busy of $(nproc)"
  # Prepares a replica dropped past replication.inbound_budget: only a replica thread held up
  # (a state sync) should ever drop; a healthy run shows 0 on every member.
  local dropped=""
  for n in 0 1 2; do
    dropped+=" $( (curl -fs "http://127.0.0.1:2${n}300/metrics" 2>/dev/null || true) |
      awk '/^iggy_replication_inbound_dropped_total/ {print $2}')"
  done
  [ -n "${dropped// /}" ] && echo "  prepares dropped past the inbound budget, per member:$dropped"
  return 0
}

echo "== machine: $(nproc) cores; data in $WORK; $BATCHES batches of 1000 x 1000 B per scenario"
for fsync in never always; do
  for run in $(seq "${REPEAT:-1}"); do
    start_single $fsync
    measure 28090 "single fsync=$fsync run=$run"
    stop_all
    for route in star ring; do
      start_cluster $route $fsync
      measure 28090 "cluster route=$route fsync=$fsync via=primary run=$run"
      stop_all
    done
    # What encrypting the replication connections costs (replication.tls).
    start_cluster star $fsync true
    measure 28090 "cluster route=star fsync=$fsync tls via=primary run=$run"
    stop_all
  done
done
# Produce only, so that the cores a run keeps busy are the produce's: with every core of this
# machine busy at the cluster's CPU per megabyte (its own, the load generator's and the kernel's
# loopback work), the cluster would produce `ratio x cores / busy` of the single node, whatever
# the ordering of the work. That is the most these cores allow; the ratio close to it is
# bounded by CPU, one well under it by the chain of steps one batch in flight waits for.
PRODUCE_ONLY=(--producers 1 --partitions 1 --batches "$BATCHES" --batch-size 1000 --message-size 1000
  --no-consume)
start_single never
measure 28090 "single produce only" "${PRODUCE_ONLY[@]}"
stop_all
start_cluster star never
measure 28090 "cluster route=star produce only" "${PRODUCE_ONLY[@]}"
stop_all

# The yardstick (`store-floor`): processes that only receive each megabyte, forward it (the
# primary, to two backups), append it to a file and acknowledge it once a majority holds it.
# No protocol, WAL, checksum or index: the copies any replicated store makes with ordinary
# reads and writes, and nothing else. Its replicated-to-single ratio on these cores is what
# the replication itself leaves of a single node here, whatever the broker does.
declare -A FLOOR FLOOR_P99
floor() { # label window [backup addresses: replicated]
  local label=$1 window=$2
  shift 2
  rm -rf "$WORK/floor"; mkdir -p "$WORK/floor"
  local n=1
  for address in "$@"; do
    "$FLOOR_BIN" sink "$address" "$WORK/floor/backup-$n" & PIDS+=($!)
    n=$((n + 1))
  done
  # Each process retries its connections for a few seconds (a probe would take a store's only
  # connection), so they start in any order.
  if [ $# -gt 0 ]; then
    "$FLOOR_BIN" primary 127.0.0.1:28500 "$WORK/floor/primary" "$@" & PIDS+=($!)
  else
    "$FLOOR_BIN" sink 127.0.0.1:28500 "$WORK/floor/primary" & PIDS+=($!)
  fi
  sync; sleep 1
  local machine_before out rate p99
  machine_before=$(machine_jiffies)
  out=$("$FLOOR_BIN" load 127.0.0.1:28500 "$BATCHES" "$window")
  echo "[store-floor $label, $window in flight] $out; cores busy (whole machine): $(cores_busy \
    "$machine_before" "$(machine_jiffies)") of $(nproc)"
  # A bound is the best a store managed: the highest rate and the lowest p99 of the rounds.
  rate=$(sed -n 's/.*MB\/s=\([0-9]*\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")
  [ "${rate:-0}" -gt "${FLOOR[$label $window]:-0}" ] && FLOOR[$label $window]=$rate
  if [ -z "${FLOOR_P99[$label $window]:-}" ] ||
    awk -v a="$p99" -v b="${FLOOR_P99[$label $window]}" 'BEGIN { exit !(a < b) }'; then
    FLOOR_P99[$label $window]=$p99
  fi
  stop_all
  rm -rf "$WORK/floor"
}
# Two rounds, alternating: this VM has slow stretches (fresh page cache after a large free
# comes slowly now and then), and one round can land in one.
for _ in 1 2; do
  for window in 1 4; do
    floor single "$window"
    floor star "$window" 127.0.0.1:28501 127.0.0.1:28502
  done
done

start_cluster star never
measure 28190 "cluster route=star fsync=never via=backup" --producers 1 --partitions 1 \
  --batches "$BATCHES" --batch-size 1000 --message-size 1000 --keep
# The trimmer gives free heap back after a second of idleness; what stays is what the replicas
# hold, with the scenario's messages kept (their index entries stay in the segments' files).
sleep 4
echo "idle RSS per replica after the load: $(for pid in "${PIDS[@]}"; do printf '%s MiB ' "$(rss_mib "$pid")"; done)"
stop_all

# Many partitions and small batches: the per-request costs (a VSR round trip each, a checkpoint
# every 64 ops) instead of the per-megabyte ones; then ten times the partitions, which only
# what a checkpoint does per partition should feel.
for parts in 1000 10000; do
  SMALL=(--producers 4 --partitions "$parts" --batches "$SMALL_BATCHES" --batch-size 10
    --message-size 100 --no-consume)
  start_single never
  measure 28090 "single fsync=never $parts partitions, 4 producers, 10 x 100 B" "${SMALL[@]}"
  stop_all
  start_cluster star never
  measure 28090 "cluster route=star fsync=never $parts partitions, 4 producers, 10 x 100 B" "${SMALL[@]}"
  stop_all
done

echo "produce against the single node of the same run (the issue's targets: 0.7x never, 0.5x always):"
for fsync in never always; do
  for route in star ring; do
    echo "  $route, fsync=$fsync: $(ratio "cluster route=$route fsync=$fsync via=primary run=1" \
      "single fsync=$fsync run=1")"
  done
  echo "  star over TLS, fsync=$fsync: $(ratio "cluster route=star fsync=$fsync tls via=primary run=1" \
    "single fsync=$fsync run=1")"
done
cpu_bound=$(awk -v r="$(ratio "cluster route=star produce only" "single produce only")" \
  -v busy="${BUSY[cluster route=star produce only]:-0}" -v cores="$(nproc)" \
  'BEGIN { sub(/x$/, "", r); if (r + 0 > 0 && busy + 0 > 0) printf "%.2fx", r * cores / busy; else printf "n/a" }')
echo "  star, fsync=never, produce only: $(ratio "cluster route=star produce only" "single produce only") \
with ${BUSY[cluster route=star produce only]:-?} of $(nproc) cores busy; all $(nproc) busy at its CPU per MB: $cpu_bound"
# The same ratio for the yardstick, and against the broker's own single node: the least work
# three replicas on these cores allow, next to what the broker's cluster reaches of it.
broker_single=$(awk -v m="${PRODUCED[single produce only]:-0}" 'BEGIN {printf "%.0f", m / 1000}')
broker_star=$(awk -v m="${PRODUCED[cluster route=star produce only]:-0}" 'BEGIN {printf "%.0f", m / 1000}')
for window in 1 4; do
  echo "  store-floor (copies only), $window in flight: star $(quotient "${FLOOR[star $window]:-}" \
"${FLOOR[single $window]:-}") of its own single sink, $(quotient "${FLOOR[star $window]:-}" \
"$broker_single") of the broker's single node"
done
echo "  the broker's star cluster (produce only) reaches $(quotient "$broker_star" \
"${FLOOR[star 1]:-}") of store-floor's star with one batch in flight"
echo "  p99 with one batch in flight (the issue's target: the cluster's at most 2x the single \
node's): store-floor's star ${FLOOR_P99[star 1]:-?} ms, $(quotient "${FLOOR_P99[star 1]:-}" \
"${PRODUCE_P99[single produce only]:-}") of the broker's single node; the broker's star \
$(quotient "${PRODUCE_P99[cluster route=star produce only]:-}" \
"${PRODUCE_P99[single produce only]:-}")"
for parts in 1000 10000; do
  echo "  $parts partitions, 10 x 100 B: $(ratio \
    "cluster route=star fsync=never $parts partitions, 4 producers, 10 x 100 B" \
    "single fsync=never $parts partitions, 4 producers, 10 x 100 B")"
done

start_cluster star never
sleep 2
echo "idle RSS per replica: $(for pid in "${PIDS[@]}"; do printf '%s MiB ' "$(rss_mib "$pid")"; done)"
# Failover: a topic to send to, then kill -9 the primary (member 0) and time the first send
# through member 1 that the new primary acknowledges — on an idle cluster, then on clusters
# taking megabyte batches through member 1 when the primary dies. Under load, the view change
# carries the prepares since the last checkpoint (up to 64 of them plus the pipeline), so the
# time depends on where the kill falls between checkpoints: FAILOVER_RUNS kills at different
# moments, reported one by one and as min / median / max (the target is 2 s for every one).
DEFAULT_FAILOVERS=5
[ "${1:-}" = "--quick" ] && DEFAULT_FAILOVERS=2
FAILOVER_RUNS=${FAILOVER_RUNS:-$DEFAULT_FAILOVERS}
FAILOVER_MS=()
failover() { # label [seconds of load before the kill]
  "$LOAD" --address 127.0.0.1:28190 --producers 1 --partitions 1 --batches 10 --no-consume --keep \
    --label "failover setup" >/dev/null
  local load=""
  if [ -n "${2:-}" ]; then
    "$LOAD" --address 127.0.0.1:28190 --producers 1 --partitions 1 --batches 100000 --no-consume \
      --keep --label "failover load" >/dev/null 2>&1 &
    load=$!
    sleep "$2"
  fi
  kill -9 "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true
  local t0; t0=$(date +%s%N)
  until "$LOAD" --address 127.0.0.1:28190 --producers 1 --partitions 1 --batches 1 --no-consume --keep \
    --label failover >/dev/null 2>&1; do sleep 0.01; done
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  FAILOVER_MS+=("$ms")
  echo "failover $1 (primary killed -> first acknowledged send through the new primary): $ms ms"
  if [ -n "$load" ]; then kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true; fi
  PIDS=("${PIDS[@]:1}")
}
failover "idle"
stop_all
FAILOVER_MS=()
for run in $(seq 1 "$FAILOVER_RUNS"); do
  start_cluster star never
  # 1.0 s, 1.3 s, 1.6 s ... of load: kills at different points of the checkpoint interval.
  failover "under load, run $run" "$(awk -v r="$run" 'BEGIN {printf "%.1f", 0.7 + 0.3 * r}')"
  stop_all
done
echo "failover under load over $FAILOVER_RUNS runs: $(printf '%s\n' "${FAILOVER_MS[@]}" | sort -n |
  awk '{v[NR] = $1} END {printf "min %d / median %d / max %d ms", v[1], v[int((NR + 1) / 2)], v[NR]}')"
