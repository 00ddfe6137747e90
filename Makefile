# storefront: `make run` serves on SQLite, `make test` runs lint + the whole suite.
# Both create .venv on first use and reinstall only when pyproject.toml or requirements/*.lock change.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.runtime-installed
PROTO_FILES := $(shell find protos/storefront -name '*.proto' | sort)
GEN_PY := generated/python
GEN_TS := generated/typescript
TS_CLIENT := clients/typescript
NODE_STAMP := $(TS_CLIENT)/node_modules/.installed

.PHONY: help venv generate check-generated lint format typecheck test test-python test-typescript test-readme test-fast fuzz run migrate bench profile cluster clean

help:
	@echo "make run     - serve gRPC on 127.0.0.1:50051 (SQLite in ./var), metrics on :9464"
	@echo "make test    - lint, check generated stubs, run the whole test suite"
	@echo "make fuzz    - nightly-size fuzz of every RPC (FUZZ_EXAMPLES per RPC, default 3000)"
	@echo "make generate, make lint, make typecheck, make migrate, make bench"

# Two sets, one environment: make run (and migrate, cluster) installs the runtime set only; make test,
# generate, bench and the other development targets add the development set (requirements/dev.lock).
$(RUNTIME_STAMP): pyproject.toml requirements/runtime.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/runtime.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

$(STAMP): $(RUNTIME_STAMP) requirements/dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.lock
	@touch $@

venv: $(STAMP)

# The TypeScript client's exact packages (package-lock.json), protoc-gen-es among them.
$(NODE_STAMP): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Regenerates the Python stubs (messages, grpc, .pyi) and the TypeScript code (buf.gen.yaml) from
# protos/. Never edit generated/ by hand.
generate: $(STAMP) $(NODE_STAMP)
	$(BIN)/buf generate
	@rm -rf $(GEN_PY)/storefront
	@mkdir -p $(GEN_PY)
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=$(GEN_PY) --grpc_python_out=$(GEN_PY) \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=$(GEN_PY) \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=$(GEN_PY) \
		$(PROTO_FILES)
	@touch $(GEN_PY)/storefront/__init__.py $(GEN_PY)/storefront/v1/__init__.py $(GEN_PY)/storefront/py.typed

# Fails when generated/ differs from what the protos generate now.
check-generated: $(STAMP) $(NODE_STAMP)
	@tmp=$$(mktemp -d) && \
	$(BIN)/buf generate --output $$tmp && \
	diff -r $$tmp/$(GEN_TS) $(GEN_TS) \
		|| { echo "generated/ is stale: run 'make generate' and commit"; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp
	@tmp=$$(mktemp -d) && \
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=$$tmp --grpc_python_out=$$tmp \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=$$tmp \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=$$tmp \
		$(PROTO_FILES) && \
	touch $$tmp/storefront/__init__.py $$tmp/storefront/v1/__init__.py $$tmp/storefront/py.typed && \
	diff -r $$tmp/storefront $(GEN_PY)/storefront -x __pycache__ \
		|| { echo "generated/ is stale: run 'make generate' and commit"; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp

# The one deliberate breaking change (issue 9): Order, OrderLine, OrderRefund, OrderEvent,
# OrderState, Address and RefundStatus moved from order_service.proto to order.proto, and Product,
# ProductState and Category from catalog_service.proto to product.proto, before more services
# import them. Their full names (storefront.v1.Order...) did not change, so the wire format and
# JSON are the same; only generated modules moved (Python: order_pb2, product_pb2). buf breaking
# (FILE) reports the move against a main without the new files, and nothing once main has them.
PROTO_SPLIT_MARKER := protos/storefront/v1/order.proto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	@if git rev-parse --verify --quiet main >/dev/null && git cat-file -e main:protos 2>/dev/null; then \
		if git cat-file -e main:$(PROTO_SPLIT_MARKER) 2>/dev/null; then \
			$(BIN)/buf breaking --against '.git#branch=main'; \
		else \
			echo "buf breaking: skipped once, main predates the proto split (see Makefile)"; \
		fi; \
	fi

typecheck: $(STAMP)
	$(BIN)/mypy server clients/python tests bench deploy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/buf format -w

test: lint typecheck check-generated test-python test-typescript

test-python: $(STAMP)
	$(BIN)/python -m pytest -q

# The TypeScript client type-checked and run against a real server (clients/typescript/test).
test-typescript: $(STAMP) $(NODE_STAMP)
	cd $(TS_CLIENT) && npm test --silent

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x

# Nightly-size run of tests/e2e/test_fuzz.py: FUZZ_EXAMPLES requests per RPC on SQLite, a sixth
# of that on PostgreSQL (when STOREFRONT_TEST_POSTGRES_URL is set); no per-test time limit.
FUZZ_EXAMPLES ?= 3000
fuzz: $(STAMP)
	STOREFRONT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q --timeout=0 tests/e2e/test_fuzz.py

migrate: $(RUNTIME_STAMP)
	$(BIN)/storefront migrate

run: $(RUNTIME_STAMP)
	$(BIN)/storefront migrate
	$(BIN)/storefront seed
	$(BIN)/storefront serve

# Throughput, latency, CPU and memory per RPC next to a bare grpcio echo ceiling (README
# "Benchmarks"); BENCH_ARGS="--duration 5 --rpc GetProduct" and so on, see bench/run.py --help.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Where each RPC spends the server's CPU (py-spy samples under the bench load; docs/performance.md);
# PROFILE_ARGS="--rpc GetProduct --output var/profiles" and so on, see bench/profile.py --help.
profile: $(STAMP)
	$(BIN)/python bench/profile.py $(PROFILE_ARGS)

# Three replicas on the local PostgreSQL behind nginx (grpc_pass), until Ctrl-C; see deploy/README.md.
cluster: $(STAMP)
	$(BIN)/python deploy/cluster.py $(CLUSTER_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
