# slotkeeper: build, test and lint entry points. `make help` lists the targets.
#
# Needs GNU make, bash, Go (the version in go.mod) and python3 (the test tools
# live in a local virtual environment, .venv, created by `make venv`).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules --no-print-directory

GO ?= go

# Lambda functions: one per directory functions/<name>/ holding a main.go.
# Adding a function is adding its directory: `make build` and the SAM target
# build-<Name>Function (see below) follow from it.
FUNCTIONS_DIR := functions
FUNCTIONS := $(sort $(patsubst $(FUNCTIONS_DIR)/%/main.go,%,$(wildcard $(FUNCTIONS_DIR)/*/main.go)))

BUILD_DIR := build

# Lambda runs the functions as `bootstrap` on provided.al2023 / arm64.
#   lambda.norpc  leaves out the legacy Go 1.x RPC entry point (not used on provided.al2023).
#   -trimpath, -buildvcs=false
#                 make the binary depend on the sources only, not on the checkout path
#                 or commit: an unchanged function builds to the same bytes, so a
#                 deploy has no reason to update it.
#   -s -w         strip the symbol table and DWARF (smaller zip, faster cold start).
GO_BUILD_ENV := CGO_ENABLED=0 GOOS=linux GOARCH=arm64
GO_BUILD_FLAGS := -tags lambda.norpc -trimpath -buildvcs=false -ldflags='-s -w'

# go_build,<function>,<output file>: the command that builds one function.
go_build = $(GO_BUILD_ENV) $(GO) build $(GO_BUILD_FLAGS) -o "$(2)" ./$(FUNCTIONS_DIR)/$(1)

# Python test tools (moto server, cfn-lint, SAM CLI, shellcheck), pinned in
# test/requirements.txt.
VENV := .venv
PY_REQUIREMENTS := test/requirements.txt

# Shell scripts checked by shellcheck.
SHELL_SCRIPTS := $(wildcard scripts/*.sh deploy/*.sh) .ci/run

# Go files checked by gofmt: tracked and new (untracked, not ignored) files that
# exist; outside a git checkout, every .go file except those in .venv and SAM's
# build directory.
GO_FILES = $(filter-out $(VENV)/% .aws-sam/% $(BUILD_DIR)/%,$(wildcard $(shell \
	git ls-files --cached --others --exclude-standard -- '*.go' 2>/dev/null || \
	find . \( -path ./$(VENV) -o -path ./.aws-sam -o -path ./.git \) -prune -o -name '*.go' -print | sed 's|^\./||')))

# The X-Ray SDK logs an error for every segment it cannot find when code runs
# outside Lambda; tests that care configure X-Ray themselves.
test bench campaign mutants: export AWS_XRAY_CONTEXT_MISSING := IGNORE_ERROR

.PHONY: help
help: ## List the targets
	@echo "Targets:"
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "SAM custom-build targets (sam build calls them with ARTIFACTS_DIR set):"
	@$(if $(SAM_TARGETS),printf '  %s\n' $(SAM_TARGETS),echo "  (none: no $(FUNCTIONS_DIR)/*/main.go yet)")

.PHONY: build
build: ## Build every function to build/<name>/bootstrap (linux/arm64)
	@$(if $(FUNCTIONS),,echo "build: no $(FUNCTIONS_DIR)/*/main.go found" >&2; exit 1)
	@for f in $(FUNCTIONS); do \
		echo "==> build $$f -> $(BUILD_DIR)/$$f/bootstrap"; \
		mkdir -p "$(BUILD_DIR)/$$f"; \
		$(call go_build,$$f,$(BUILD_DIR)/$$f/bootstrap); \
	done

# SAM custom builds (Metadata: BuildMethod: makefile, CodeUri: .): for each
# function, `sam build` runs `make build-<LogicalId> ARTIFACTS_DIR=<dir>` and
# packages <dir>/bootstrap. The logical id is the directory name with its first
# letter upper-cased plus "Function": launch -> LaunchFunction.
sam_logical_id = $(shell printf '%s' '$(1)' | awk '{ print toupper(substr($$0, 1, 1)) substr($$0, 2) }')Function

# SAM_BUILD_RULE,<function>,<logical id>
define SAM_BUILD_RULE
.PHONY: build-$(2)
build-$(2):
	@test -n "$$(ARTIFACTS_DIR)" || { echo "build-$(2): ARTIFACTS_DIR is not set (sam build sets it)" >&2; exit 1; }
	@mkdir -p "$$(ARTIFACTS_DIR)"
	$$(call go_build,$(1),$$(ARTIFACTS_DIR)/bootstrap)
endef

SAM_TARGETS := $(foreach f,$(FUNCTIONS),build-$(call sam_logical_id,$(f)))
$(foreach f,$(FUNCTIONS),$(eval $(call SAM_BUILD_RULE,$(f),$(call sam_logical_id,$(f)))))

.PHONY: venv
venv: ## Create or update .venv with the pinned Python test tools
	@bash scripts/venv.sh $(VENV) $(PY_REQUIREMENTS)

# Apache Kafka's server runtime (pinned in scripts/kafka-runtime.pom.xml, checked
# against scripts/kafka-runtime.sha256) for the real-Kafka tests and `make demo
# KAFKA=real`, cached in .cache/kafka. Quick when the cache is in place.
.PHONY: kafka-runtime
kafka-runtime: ## Fetch and verify Apache Kafka's runtime from Maven Central into .cache/kafka (needs java, mvn)
	@bash scripts/kafka-runtime.sh

.PHONY: fmt
fmt: ## Format the Go sources in place (gofmt -w)
	@$(if $(GO_FILES),gofmt -w $(GO_FILES),true)

.PHONY: fmt-check
fmt-check: ## Fail, listing them, if any Go file is not gofmt-formatted
	@echo "==> gofmt"
	@$(if $(GO_FILES),,exit 0;) \
	unformatted="$$(gofmt -l $(GO_FILES))"; \
	if [[ -n "$$unformatted" ]]; then \
		echo "These files are not gofmt-formatted (run 'make fmt'):" >&2; \
		echo "$$unformatted" >&2; \
		exit 1; \
	fi

.PHONY: vet
vet: ## Run go vet
	@echo "==> go vet"
	$(GO) vet ./...

.PHONY: shellcheck
shellcheck: venv ## Lint the shell scripts (scripts/, deploy/, .ci/run) with shellcheck
	@echo "==> shellcheck"
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)

.PHONY: cfn-lint
cfn-lint: venv ## Lint template.yaml with cfn-lint
	@echo "==> cfn-lint"
	$(VENV)/bin/cfn-lint template.yaml

.PHONY: sam-check
sam-check: venv ## sam validate --lint, and an offline sam build with a bootstrap per function
	@echo "==> sam validate, sam build"
	@bash scripts/sam-check.sh $(VENV)

# The real-block-device tests (test/loopdev: loop devices, xfs, ext4) need system
# tools; as root with apt-get this installs the missing ones, else it says which.
.PHONY: test-tools
test-tools: ## Install the system tools the block-device and bootstrap tests need (xfsprogs, e2fsprogs, psmisc, curl, user-mode-linux, kmod), if missing
	@bash scripts/test-tools.sh

# The template tests (test/template_*_test.go) need the SAM translator that the
# venv's SAM CLI brings; the venv target provides it.
.PHONY: test
test: venv test-tools kafka-runtime fmt-check vet shellcheck cfn-lint sam-check ## Check formatting, vet, lint scripts and template, sam build, fetch Kafka, and run all tests with the race detector
	@echo "==> go test"
	$(GO) test -race -count=1 -timeout 20m ./...

# The Auto Scaling simulator's campaign (test/asgsim, docs/simulation.md): SEEDS
# seeds from FIRST, WORKERS at once (each on its own moto), every failing seed
# shrunk to its shortest failing prefix. The table is printed at the end and kept in
# campaign.txt, the whole output (a line per seed as it ends) in campaign.log; any
# violation fails the target.
SEEDS ?= 100
FIRST ?= 1
WORKERS ?= 2
.PHONY: campaign
campaign: venv ## Run the Auto Scaling simulator on SEEDS seeds (FIRST, WORKERS) and print the campaign's table
	@echo "==> campaign: $(SEEDS) seeds from $(FIRST), $(WORKERS) workers"
	@rm -f campaign.txt; status=0; \
	$(GO) test -count=1 -timeout 0 -v -run '^TestCampaign$$' ./test/asgsim \
		-args -seeds=$(SEEDS) -first=$(FIRST) -workers=$(WORKERS) -table=$(CURDIR)/campaign.txt >campaign.log 2>&1 || status=$$?; \
	if [[ -f campaign.txt ]]; then cat campaign.txt; else tail -n 60 campaign.log; fi; \
	echo "(full output in campaign.log)"; exit $$status

# Each deliberately broken variant of the product code (test/asgsim/mutants_test.go),
# built into the campaign with go's -overlay, must be caught by the invariant it
# breaks. Minutes per mutant.
.PHONY: mutants
mutants: venv ## Check that the campaign catches each deliberately broken variant of the code, naming its invariant
	$(GO) test -count=1 -timeout 0 -v -run '^TestMutants$$' ./test/asgsim -args -mutants=all

.PHONY: lint
lint: venv fmt-check vet shellcheck cfn-lint ## gofmt, go vet, shellcheck, cfn-lint on template.yaml and golangci-lint (if installed)
	@echo "==> golangci-lint"
	@if command -v golangci-lint >/dev/null; then \
		golangci-lint run ./...; \
	else \
		echo "golangci-lint is not on PATH; skipped (install v2: go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@latest)"; \
	fi

# The benchmarks' raw output goes to bench.txt; test/benchreport turns it, the
# functions' zips and slotctl's size into one table, printed and kept with the
# machine's description in docs/benchmarks.md.
.PHONY: bench
bench: venv build slotctl ## Run the benchmarks; print one table of figures and keep it in docs/benchmarks.md (raw output in bench.txt)
	@start=$$(date +%s); \
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 60m ./... | tee bench.txt; \
	echo "==> figures (also in docs/benchmarks.md)"; \
	$(GO) run ./test/benchreport -in bench.txt -build $(BUILD_DIR) -doc docs/benchmarks.md -wall "$$(( $$(date +%s) - start ))s"

.PHONY: clean
clean: ## Remove build outputs (keeps .venv)
	rm -rf $(BUILD_DIR) .aws-sam bench.txt campaign.txt campaign.log coverage.out coverage.html

# slotctl, the operator CLI (cmd/slotctl), for this machine, not Lambda's arm64.
.PHONY: slotctl
slotctl: ## Build the operator CLI to build/slotctl (for this machine)
	$(GO) build -o $(BUILD_DIR)/slotctl ./cmd/slotctl

# The demo builds the real functions for this machine and runs them, as Lambda does,
# against moto from .venv and an in-process Kafka (KAFKA=kfake, the default) or
# Apache Kafka itself (KAFKA=real). No AWS account. See docs/demo.md.
KAFKA ?= kfake
.PHONY: demo
demo: venv slotctl $(if $(filter real,$(KAFKA)),kafka-runtime) ## Run the whole lifecycle on this machine: moto, Kafka (KAFKA=kfake|real), the real functions (about a minute)
	$(BUILD_DIR)/slotctl demo --kafka $(KAFKA)
