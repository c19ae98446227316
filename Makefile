# presence-bridge. On a fresh Debian machine with Go installed:
#   make run     a local sandbox: Prosody, Dendrite and the bridge on 127.0.0.1, one XMPP
#                user and one Matrix user who see each other's presence (Ctrl-C stops it)
#   make test    install Prosody (apt), build Dendrite and nats-server, run every test
# Deploying for real, with your servers and your config:
#   make run-bridge CONFIG=config.yaml   (that is: presence-bridge -config config.yaml)
.PHONY: build run run-bridge prosody deps dendrite natsserver test check bench fuzz clean

# Go 1.27 (mautrix's federation packages need it); fetched by any installed
# Go through the module proxy.
export GOTOOLCHAIN := go1.27.3

BIN      := .build/bin
CONFIG   ?= config.yaml
SANDBOX  ?= .build/sandbox
GO       ?= go
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

build:
	$(GO) build -o $(BIN)/ ./cmd/presence-bridge ./cmd/sandbox

# The sandbox (cmd/sandbox): everything in $(SANDBOX), reused by the next
# run, removed by make clean.
run: build prosody dendrite
	$(BIN)/sandbox -dir $(SANDBOX)

run-bridge: build
	$(BIN)/presence-bridge -config $(CONFIG)

prosody:
	@command -v prosody >/dev/null && command -v prosodyctl >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody; }

# The real servers the tests run against: Prosody 0.12 from Debian,
# Dendrite v0.15.2 built from the tool module in tools/dendrite, nats-server
# v2.15.2 (the cluster tests, three processes) from tools/natsserver.
deps:
	@command -v prosody >/dev/null && command -v prosodyctl >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prosody; }

dendrite:
	@test -x $(BIN)/dendrite || { cd tools/dendrite && $(GO) build -o ../../$(BIN)/ tool; }

# nats-server v2.15.2 for the cluster tests (three processes on loopback),
# from the tool module in tools/natsserver.
natsserver:
	@test -x $(BIN)/nats-server || { cd tools/natsserver && $(GO) build -o ../../$(BIN)/ tool; }

test: deps dendrite natsserver
	$(GO) test -count=1 -timeout 30m ./...

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./mapping/ ./bridge/... ./xmppside/... ./matrixside/... ./matrixfed/... ./e2e/...

# Short fuzzing of every fuzz target (seed corpora are in testdata/fuzz).
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$pkg || exit 1; \
		done; \
	done

clean:
	rm -rf .build
