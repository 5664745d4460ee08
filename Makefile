# filter-milter
#
#   make deps   install the integration test dependencies (root, Debian bookworm)
#   make test   deps, gofmt check, go vet, go test -race (unit + integration)
#   make demo   deps, then a live run: OpenSMTPD -> filter-milter -> opendkim

GO        ?= go
# The whole run takes under a minute; the timeout only guards
# against a hang (CI allows 25 minutes in all).
TEST_TIMEOUT ?= 8m
TESTFLAGS ?=

.PHONY: all build deps test fmt-check vet unit demo clean

all: build

build:
	$(GO) build ./...

deps:
	./.ci/install-deps

fmt-check:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

test: deps fmt-check vet
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v $(TESTFLAGS) ./...

demo: deps
	$(GO) run ./integration/cmd/demo

clean:
	rm -rf bin/ filter-milter
