#!/usr/bin/env bash
# Starts a three-replica iggy-broker cluster on loopback (make run-cluster) and stops every
# replica it started on Ctrl-C. Data under $DATA/member-<n>; the ring file is $DATA/ring.json.
#
#   member  client (Iggy TCP)  HTTP            replication
#   0       127.0.0.1:8090     127.0.0.1:3000  127.0.0.1:8091
#   1       127.0.0.1:8190     127.0.0.1:3100  127.0.0.1:8191
#   2       127.0.0.1:8290     127.0.0.1:3200  127.0.0.1:8291
set -euo pipefail

BROKER=${BROKER:-./target/release/iggy-broker}
DATA=${DATA:-./local_cluster}
PASSWORD=${IGGY_ROOT_PASSWORD:-iggy}
# The replicas prove this to each other before they talk; a fresh one per start unless given.
SECRET=${IGGY_REPLICATION_SECRET:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}

mkdir -p "$DATA"
cat > "$DATA/ring.json" <<JSON
{"cluster_id": "local", "epoch": 0, "members": [
  {"id": 0, "position": 0, "address": "127.0.0.1:8091", "client_address": "127.0.0.1:8090"},
  {"id": 1, "position": 1, "address": "127.0.0.1:8191", "client_address": "127.0.0.1:8190"},
  {"id": 2, "position": 2, "address": "127.0.0.1:8291", "client_address": "127.0.0.1:8290"}
]}
JSON

pids=()
stop() {
    echo "stopping the replicas"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap "exit 130" INT TERM
trap stop EXIT

for n in 0 1 2; do
    IGGY_SYSTEM_PATH="$DATA/member-$n" \
    IGGY_TCP_ADDRESS="127.0.0.1:8${n}90" \
    IGGY_HTTP_ADDRESS="127.0.0.1:3${n}00" \
    IGGY_REPLICATION_ADDRESS="127.0.0.1:8${n}91" \
    IGGY_CLUSTER_RING_FILE="$DATA/ring.json" \
    IGGY_CLUSTER_MEMBER_ID="$n" \
    IGGY_ROOT_USERNAME=iggy \
    IGGY_ROOT_PASSWORD="$PASSWORD" \
    IGGY_REPLICATION_SECRET="$SECRET" \
        "$BROKER" > "$DATA/member-$n.log" 2>&1 &
    pids+=($!)
done

for n in 0 1 2; do
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:3${n}00/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

cat <<TEXT
Three replicas of one cluster are running (logs in $DATA/member-<n>.log). Any member serves
any Iggy client; writes are committed on a majority before they are acknowledged:
  iggy --tcp-server-address 127.0.0.1:8190 -u iggy -p $PASSWORD stream create demo
  iggy --tcp-server-address 127.0.0.1:8290 -u iggy -p $PASSWORD stream list
Replica status: curl http://127.0.0.1:3000/admin/status (also :3100, :3200)
The replicas admit only each other on their replication ports (a secret generated for this
start; set IGGY_REPLICATION_SECRET to choose one).
Kill one (say member 0) and the other two carry on. Stop all: Ctrl-C.
TEXT
for n in 0 1 2; do
    printf 'member %s: ' "$n"; curl -s "http://127.0.0.1:3${n}00/admin/status"; echo
done
wait "${pids[@]}"
