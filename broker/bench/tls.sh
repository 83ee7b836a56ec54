#!/usr/bin/env bash
# What TLS on the client port costs: one broker, plain TCP against TLS (`[tcp.tls]`, a
# certificate from a throwaway CA made with openssl), each with one producer and one consumer
# on one partition (1000-byte messages in batches of 1000) and with four of each on four
# partitions, fsync=never; the broker's CPU and RSS after each. The load generator speaks TLS
# with rustls like the broker, so both ends pay for the encryption on these cores.
# Usage: broker/bench/tls.sh [--quick]   (--quick: 100 batches per scenario, else 1000)
set -euo pipefail
cd "$(dirname "$0")/../.."
BATCHES=1000
[ "${1:-}" = "--quick" ] && BATCHES=100
if ! command -v openssl >/dev/null; then
  echo "tls bench skipped: openssl not found (it makes the throwaway certificates)"
  exit 0
fi
. broker/bench/lib.sh tls

# A CA and a server certificate for localhost, both EC P-256 (what cert-manager issues by
# default is RSA 2048; the handshake is outside the measured stream either way).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 1 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null

scenario() { # label load-flags broker-env...
  local label=$1 flags=$2
  shift 2
  for producers in 1 4; do
    rm -rf "$WORK/data"
    env IGGY_SYSTEM_PATH="$WORK/data" IGGY_TCP_ADDRESS=127.0.0.1:28090 \
      IGGY_HTTP_ADDRESS=127.0.0.1:23000 IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy \
      IGGY_STORAGE_FSYNC=never IGGY_LOGGING_LEVEL=warn "$@" "$BROKER" >"$WORK/broker.log" 2>&1 &
    PIDS=($!)
    wait_ready 23000
    for run in $(seq "${REPEAT:-1}"); do
      sync; sleep 1
      local before
      before=$(cpu_seconds "${PIDS[0]}")
      # shellcheck disable=SC2086
      "$LOAD" --address 127.0.0.1:28090 --producers "$producers" --partitions "$producers" \
        --batches "$BATCHES" --batch-size 1000 --message-size 1000 $flags \
        --label "tls=$label producers=$producers run=$run"
      echo "tls=$label producers=$producers broker CPU: $(awk -v a="$before" \
        -v b="$(cpu_seconds "${PIDS[0]}")" 'BEGIN {printf "%.2f", b - a}') s," \
        "RSS: $(rss_mib "${PIDS[0]}") MiB"
    done
    stop_all
  done
}

scenario plain ""
scenario tls "--tls-ca $WORK/ca.pem --tls-domain localhost" IGGY_TCP_TLS_ENABLED=true \
  IGGY_TCP_TLS_CERT_FILE="$WORK/server.pem" IGGY_TCP_TLS_KEY_FILE="$WORK/server.key"
