# metastate - RWKV-7 / Meta-State inference server.
#
#   make run     install what is missing, build, start the server on the default model
#   make test    install, build, run every test, then the whole suite again under ASan+UBSan
#   make bench   benchmarks (not part of make test)
#   make fuzz    every libFuzzer target for FUZZ_SECONDS each (make test runs each briefly)
#
# Every user-facing target first runs `deps`, which apt-get installs the Debian
# packages that are missing (and nothing when all are there). The real work is
# done by a sub-make, so that pkg-config is only asked once it is installed.

SHELL := /bin/bash
.DEFAULT_GOAL := all

BUILD   ?= build
MODEL   ?= models/default.safetensors
VOCAB   ?= $(if $(filter models/default.safetensors,$(MODEL)),models/bytes_vocab.txt,)
PORT    ?= 8080
HOST    ?= 127.0.0.1
SHARED  ?= ../shared

# Debian packages: the build, then what the tests use.
BUILD_PKGS := gcc libc6-dev make pkg-config libmicrohttpd-dev libjansson-dev \
              libopenblas-dev libuv1-dev libssl-dev libhiredis-dev zlib1g-dev
RUN_PKGS   := curl
TEST_PKGS  := libcriterion-dev curl nodejs npm chromium redis-server fortunes python3-numpy \
              clang libclang-rt-14-dev
# make bench: the serving benchmark's client, and the held-out text for bits per byte.
BENCH_PKGS := nodejs fortunes python3-numpy
# CI (.ci/run) requires the reference checks, so it installs what they need;
# a user's make test skips them without it, saying so.
REF_PKGS   := $(if $(filter-out 0,$(METASTATE_REQUIRE_REFERENCE)),python3-torch python3-numpy,)

.PHONY: all deps deps-test deps-run deps-bench fresh-debian build unit-bin check test bench run clean asan \
        fuzz fuzz-bin fuzz-run

all: deps
	@$(MAKE) --no-print-directory build

deps:
	@bash tools/deps.sh $(BUILD_PKGS)

deps-test:
	@bash tools/deps.sh $(BUILD_PKGS) $(TEST_PKGS) $(REF_PKGS)

deps-run:
	@bash tools/deps.sh $(BUILD_PKGS) $(RUN_PKGS)

deps-bench:
	@bash tools/deps.sh $(BUILD_PKGS) $(BENCH_PKGS)

test: deps-test
	@$(MAKE) --no-print-directory check

bench: deps-bench
	@$(MAKE) --no-print-directory build
	@bash tools/bench.sh $(BUILD)

# libFuzzer targets (tests/fuzz), each for FUZZ_SECONDS; new inputs collect
# in $(BUILD)/fuzz/corpus, crashes in $(BUILD)/fuzz/artifacts.
FUZZ_SECONDS ?= 300
fuzz: deps-test
	@$(MAKE) --no-print-directory fuzz-run

run: deps-run
	@$(MAKE) --no-print-directory build
	@bash tools/run.sh "$(BUILD)" "$(MODEL)" "$(HOST)" "$(PORT)" "$(VOCAB)"

# Proves the README in a minbase Debian 12 root (debootstrap): see the script.
fresh-debian:
	@bash tools/fresh_debian.sh

clean:
	rm -rf $(BUILD)

# ---------------------------------------------------------------------------
# Everything below runs in the sub-make, with the packages installed.

CC       ?= cc
PKGS     := openblas libmicrohttpd jansson libuv libcrypto hiredis zlib
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

# The inner targets called directly (`make build`, `make unit-bin`, ...) on a
# machine without the -dev packages would stop at the first missing header,
# or, where another package has a cblas.h, at an implicit declaration: say
# what to run instead.
ifneq ($(filter build unit-bin asan check fuzz-bin fuzz-run $(BUILD)/%,$(MAKECMDGOALS)),)
ifneq ($(shell pkg-config --exists $(PKGS) 2>/dev/null && echo ok),ok)
$(error pkg-config does not find all of $(PKGS): run `make` (or `make run` / `make test`), which apt-get installs the missing packages, then this target)
endif
endif

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS   ?= -O3 -g
BASEFLAGS = -std=c11 -D_GNU_SOURCE -pthread -fno-math-errno -fno-trapping-math $(WARN) $(PKG_CFLAGS) -Iengine -Iproto -Iserver -Icli
LDLIBS    = $(PKG_LIBS) -lm -pthread

SAN_FLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

ENGINE_SRC := $(wildcard engine/*.c)
PROTO_SRC  := $(wildcard proto/*.c)
SERVER_SRC := $(wildcard server/*.c)
CLI_SRC    := $(filter-out cli/main.c,$(wildcard cli/*.c))
# The chat page (web/) becomes a generated C file of byte arrays.
WEB_FILES  := $(sort $(wildcard web/*))
WEB_GEN    := $(BUILD)/gen/web_assets.c
LIB_SRC    := $(ENGINE_SRC) $(PROTO_SRC) $(SERVER_SRC) $(CLI_SRC) $(WEB_GEN)
UNIT_SRC   := $(wildcard tests/unit/*.c)
HEADERS    := $(wildcard engine/*.h proto/*.h server/*.h cli/*.h tests/unit/*.h)

# $(call objs,DIR,SOURCES)
objs = $(patsubst %.c,$(1)/obj/%.o,$(2))

build: $(BUILD)/metastate
unit-bin: $(BUILD)/unit-tests
asan: $(BUILD)/asan/metastate $(BUILD)/asan/unit-tests

$(WEB_GEN): web $(WEB_FILES) tools/embed_web.sh
	@mkdir -p $(dir $@)
	@bash tools/embed_web.sh $@ web $(WEB_FILES)

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/asan/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(SAN_FLAGS) -c $< -o $@

$(BUILD)/metastate: $(call objs,$(BUILD),$(LIB_SRC) cli/main.c)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/unit-tests: $(call objs,$(BUILD),$(LIB_SRC) $(UNIT_SRC))
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS) -lcriterion

$(BUILD)/asan/metastate: $(call objs,$(BUILD)/asan,$(LIB_SRC) cli/main.c)
	$(CC) $(SAN_FLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/asan/unit-tests: $(call objs,$(BUILD)/asan,$(LIB_SRC) $(UNIT_SRC))
	$(CC) $(SAN_FLAGS) -o $@ $^ $(LDLIBS) -lcriterion

# Fuzz targets: the library sources built with clang's libFuzzer, ASan and
# UBSan, one binary per tests/fuzz/fuzz_*.c.
FUZZ_CC    := clang
FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
              -fno-sanitize-recover=all -Wno-unused-function
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS  := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(filter-out tests/fuzz/fuzz_util.c,$(FUZZ_SRC)))
fuzz-bin: $(FUZZ_BINS) $(BUILD)/metastate
.SECONDARY: $(call objs,$(BUILD)/fuzz,$(LIB_SRC) $(FUZZ_SRC))

$(BUILD)/fuzz/obj/%.o: %.c $(HEADERS) tests/fuzz/fuzz_util.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(BASEFLAGS) -Itests/fuzz $(FUZZ_FLAGS) -c $< -o $@

$(BUILD)/fuzz/fuzz_%: $(BUILD)/fuzz/obj/tests/fuzz/fuzz_%.o $(BUILD)/fuzz/obj/tests/fuzz/fuzz_util.o \
                      $(call objs,$(BUILD)/fuzz,$(LIB_SRC))
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

fuzz-run: fuzz-bin
	@bash tests/fuzz/run.sh $(BUILD) $(FUZZ_SECONDS) long

# The test suite: unit tests (Criterion) and the server tests (node's test
# runner with the official openai package), first with the normal build, then
# everything again with the sanitizer build. Any sanitizer report fails.
check: $(BUILD)/metastate $(BUILD)/unit-tests $(BUILD)/asan/metastate $(BUILD)/asan/unit-tests fuzz-bin
	@bash tests/run.sh $(BUILD) $(SHARED)
