# rotor: the one entry point. `make` builds, `make test` tests, `make demo` demonstrates.
#
#   make            build the module for Lua 5.4, 5.3, 5.1 and LuaJIT, and the rotor host
#   make deps       install the Debian packages rotor needs (apt-get as root; else prints it)
#   make test       lint, then the specs under Lua 5.4 and LuaJIT, then under ASan+UBSan
#   make demo       real rotations against the bundled simulator into ./secrets
#   make sim        start the simulator (SIM_DIR, build/sim) and print its environment as exports
#   make fleet-demo three rotor hosts sharing a 3-member etcd cluster (loopback)
#   make bench      the benchmarks (spec/bench/), measured in one run
#   make bench-instr instructions per GET and per durable rotation, counted by callgrind
#   make asan       the specs with the core built under AddressSanitizer + UBSan
#   make valgrind   the core's specs under valgrind (definite leaks fail)
#   make lint       luacheck, cppcheck, clang-tidy, clang-format --dry-run
#   make fuzz       the libFuzzer harnesses of spec/fuzz/, FUZZ_TIME seconds each (not in make test)
#   make mutants    break each safety behaviour in a scratch copy; its specs must fail (not in test)
#   make install    PREFIX=/usr/local (modules under share/lua/5.4, lib/lua/5.4, bin/rotor)

SHELL   := /bin/bash
CC      ?= cc
PREFIX  ?= /usr/local
BUILD   ?= build
CFLAGS  ?= -O2 -g
WARN    := -Wall -Wextra -Werror=implicit-function-declaration -Wno-unused-parameter
DEPS_PKGS := build-essential pkg-config libcurl4-openssl-dev libssl-dev \
             lua5.4 liblua5.4-dev lua5.3 liblua5.3-dev lua5.1 liblua5.1-0-dev \
             luajit2 libluajit2-5.1-dev lua-compat53-dev lua-cjson lua-cjson-dev \
             lua-busted lua-check luarocks nginx libnginx-mod-http-lua lua-resty-core \
             openssl curl wrk hyperfine valgrind cppcheck clang-tidy clang-format \
             tinyproxy procps etcd-server etcd-client prometheus clang libclang-rt-14-dev \
             nodejs
# installing these starts system services; the specs start their own on loopback
DEPS_SERVICES := nginx tinyproxy etcd prometheus prometheus-node-exporter
# apt's download sandbox user cannot resolve host names on the build machines
APT_OPTS := -o APT::Sandbox::User=root
# the commands and files `make deps` guarantees
DEPS_PROBE := /usr/include/lua5.4/lua.h /usr/include/luajit-2.1/lua.h /usr/include/lua5.1/compat-5.3.h \
              /usr/include/x86_64-linux-gnu/curl/curl.h /usr/bin/busted /usr/bin/luacheck /usr/sbin/nginx \
              /usr/lib/nginx/modules/ngx_http_lua_module.so /usr/bin/wrk /usr/bin/valgrind /usr/bin/luarocks \
              /usr/bin/cppcheck /usr/bin/clang-tidy /usr/bin/clang-format /usr/bin/hyperfine \
              /usr/lib/x86_64-linux-gnu/lua/5.4/cjson.so /usr/share/lua/5.1/resty/core.lua \
              /usr/bin/tinyproxy /usr/include/openssl/hmac.h /usr/bin/pkg-config \
              /usr/bin/etcd /usr/bin/etcdctl /usr/bin/promtool /usr/bin/clang /usr/bin/node

SRCS    := $(filter-out csrc/main.c,$(wildcard csrc/*.c))
HDRS    := $(wildcard csrc/*.h)
LIBS    := -lcurl -lcrypto -lpthread

INC_5.4 := -I/usr/include/lua5.4
INC_5.3 := -I/usr/include/lua5.3
INC_5.1 := -I/usr/include/lua5.1
INC_jit := -I/usr/include/luajit-2.1 -idirafter /usr/include/lua5.1

VERSIONS := 5.4 5.3 5.1 jit

.PHONY: sim sim-stop
.PHONY: all deps test demo fleet-demo bench bench-instr asan valgrind fuzz lint lint-lua lint-c format clean install \
        spec spec-5.4 spec-jit check-deps mutants
all: $(foreach v,$(VERSIONS),$(BUILD)/$(v)/rotor/core.so) $(BUILD)/rotor

# The compile and link rules, one set for every build (the four Lua versions here, the LuaRocks
# build below): $(call CORE_RULES,objdir,core.so,include flags,link flags) and
# $(call HOST_RULES,objdir,executable,include flags,link flags). The host embeds Lua 5.4 and loads
# rotor.core (rotor/core.so beside it, or the installed one) on first require; -rdynamic exports
# the Lua API to C modules (the signal flag reaches the core through the registry).
define CORE_RULES
$(1)/%.o: csrc/%.c $(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS) $(WARN) -fPIC -std=gnu11 -D_GNU_SOURCE $(3) -c $$< -o $$@
$(2): $(patsubst csrc/%.c,$(1)/%.o,$(SRCS))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS) $(4) -o $$@ $$^ $(LIBS)
endef
define HOST_RULES
$(1)/host/main.o: csrc/main.c $(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS) $(WARN) -std=gnu11 -D_GNU_SOURCE $(3) -c $$< -o $$@
$(2): $(1)/host/main.o
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CFLAGS) -rdynamic -o $$@ $$^ $(4) -lm -ldl
endef
$(foreach v,$(VERSIONS),$(eval $(call CORE_RULES,$(BUILD)/obj/$(v),$(BUILD)/$(v)/rotor/core.so,$(INC_$(v)),-shared)))
$(eval $(call HOST_RULES,$(BUILD)/obj,$(BUILD)/rotor,$(INC_5.4),-llua5.4))
$(BUILD)/rotor: | $(BUILD)/5.4/rotor/core.so

# ---- dependencies ----
# The specs start their own nginx and tinyproxy on loopback: the system services that installing
# those packages starts are stopped again (only when this run installed them).
check-deps:
	@missing=""; for f in $(DEPS_PROBE); do [ -e $$f ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then echo "missing:$$missing"; $(MAKE) --no-print-directory deps; fi

deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  had=""; for svc in $(DEPS_SERVICES); do [ -e /etc/init.d/$$svc ] && had="$$had $$svc"; done; \
	  apt-get $(APT_OPTS) update -qq && apt-get $(APT_OPTS) install -y -qq $(DEPS_PKGS) || exit 1; \
	  for svc in $(DEPS_SERVICES); do \
	    case " $$had " in *" $$svc "*) ;; *) service $$svc stop >/dev/null 2>&1 || true;; esac; \
	  done; \
	else \
	  echo "run as root: apt-get install $(DEPS_PKGS)"; exit 1; \
	fi

# ---- tests ----
LPATH := ./?.lua;./lua/?.lua;./lua/?/init.lua
BUSTED_ARGS ?=
SPECS ?= spec
export ROTOR_SECRETS_LOG := $(CURDIR)/$(BUILD)/issued-secrets.log

spec-5.4: all
	lua5.4 /usr/bin/busted --cpath='./$(BUILD)/5.4/?.so' --lpath='$(LPATH)' $(BUSTED_ARGS) $(SPECS)
spec-jit: all
	luajit /usr/bin/busted --cpath='./$(BUILD)/jit/?.so' --lpath='$(LPATH)' $(BUSTED_ARGS) $(SPECS)

# Each run prints busted's "N successes / N failures / N errors" line; the last line of make test
# adds them up as "summary: N passed, N failed".
# The specs' temporary directories (simulators, stores, journals, audit trails, logs) are kept
# under build/tmp for the leak scan that closes the run.
test: export TMPDIR := $(CURDIR)/$(BUILD)/tmp
test: export ROTOR_SIM_KEEP := 1
test: check-deps
	@rm -rf $(BUILD)/tmp $(ROTOR_SECRETS_LOG); mkdir -p $(BUILD)/tmp
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory all
	set -o pipefail; { $(MAKE) --no-print-directory spec-5.4 && \
	  $(MAKE) --no-print-directory spec-jit BUSTED_ARGS='--exclude-tags=slow,proc' && \
	  $(MAKE) --no-print-directory asan && \
	  $(MAKE) --no-print-directory valgrind; } 2>&1 | tee $(BUILD)/test-output.log
	lua5.4 spec/leakscan.lua $(BUILD)/issued-secrets.log $(BUILD)/test-output.log $(BUILD)/tmp
	@awk '/successes \/ [0-9]+ failures/ { p += $$1; f += $$4 + $$7 } \
	  END { printf "summary: %d passed, %d failed\n", p, f; exit (f > 0) }' $(BUILD)/test-output.log

# ---- sanitizers and valgrind ----
ASAN_BUILD := $(BUILD)/asan
ASAN_FLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
# The specs run inside an ASan+UBSan build of the host itself (busted is a Lua script), so the
# sanitizer runtime is in the executable and no LD_PRELOAD leaks into the processes specs start.
# intercept_tls_get_addr=0: clang 14's LeakSanitizer misreads the dynamic TLS ranges on Debian 12's
# glibc and its end-of-process scan can die on them ("Tracer caught signal 11", "DTLS ... at
# 0x...2a7"), seen in a rotor process that had run durable-write threads; valgrind finds nothing
# wrong in the same run. Leaks are still checked; only dynamic TLS blocks are not scanned as roots.
ASAN_RUN_OPTIONS := detect_leaks=1:intercept_tls_get_addr=0
asan:
	$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) CFLAGS='$(ASAN_FLAGS)' \
	  $(ASAN_BUILD)/5.4/rotor/core.so $(ASAN_BUILD)/rotor
	ASAN_OPTIONS=$(ASAN_RUN_OPTIONS) UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(ASAN_BUILD)/rotor /usr/bin/busted --cpath='./$(ASAN_BUILD)/5.4/?.so' --lpath='$(LPATH)' \
	  --exclude-tags=slow,proc $(BUSTED_ARGS) $(SPECS)
	# the specs that start rotor processes, with the instrumented host as those processes (it finds
	# rotor's Lua modules at ../lua from its own directory)
	ln -sfn ../lua $(BUILD)/lua
	ROTOR_BIN=$(ASAN_BUILD)/rotor ASAN_OPTIONS=$(ASAN_RUN_OPTIONS) \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(ASAN_BUILD)/rotor /usr/bin/busted --cpath='./$(ASAN_BUILD)/5.4/?.so' --lpath='$(LPATH)' \
	  $(BUSTED_ARGS) spec/host_spec.lua spec/lock_spec.lua spec/hardening_spec.lua spec/cli_spec.lua \
	  spec/durable_spec.lua

VALGRIND_SPECS ?= spec/core_spec.lua spec/http_spec.lua spec/oauth_spec.lua spec/sched_spec.lua spec/store_spec.lua
valgrind: all
	valgrind --keep-debuginfo=yes --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite \
	  --show-leak-kinds=definite \
	  lua5.4 /usr/bin/busted --cpath='./$(BUILD)/5.4/?.so' --lpath='$(LPATH)' \
	  --exclude-tags=slow,proc $(VALGRIND_SPECS)

# ---- fuzzing (clang libFuzzer + ASan + UBSan; not part of make test) ----
# Each harness runs FUZZ_TIME seconds (default 600), nice'd, over its seed corpus in
# spec/fuzz/corpus/NAME (read) and build/fuzz/corpus/NAME (where new inputs go); a crash stops
# the run and leaves its input in build/fuzz/. The header harness includes csrc/http.c itself
# (its parser is static), so it links every other core file. The harnesses that drive a Lua
# state keep Lua's heap across inputs (collected later), so libFuzzer's per-input leak check is
# off for them; ASan still checks for leaks when each run ends.
FUZZ_TARGETS := headers formenc token_request token_cache redact json
FUZZ_TIME ?= 600
FUZZ_BUILD := $(BUILD)/fuzz
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
               -std=gnu11 -D_GNU_SOURCE $(INC_5.4) -Icsrc
FUZZ_LIBS := -llua5.4 $(LIBS) -lm -ldl
$(FUZZ_BUILD)/fuzz_headers: spec/fuzz/fuzz_headers.c spec/fuzz/fuzz_common.h $(SRCS) $(HDRS)
	mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(filter-out csrc/http.c,$(SRCS)) $(FUZZ_LIBS)
$(FUZZ_BUILD)/fuzz_%: spec/fuzz/fuzz_%.c spec/fuzz/fuzz_common.h $(SRCS) $(HDRS)
	mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -o $@ $< $(SRCS) $(FUZZ_LIBS)
fuzz: $(addprefix $(FUZZ_BUILD)/fuzz_,$(FUZZ_TARGETS))
	for t in $(FUZZ_TARGETS); do \
	  case $$t in headers|formenc) leaks=1;; *) leaks=0;; esac; \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t && \
	  ASAN_OPTIONS=detect_leaks=1 nice $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_TIME) -detect_leaks=$$leaks \
	    -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/$$t- \
	    $(FUZZ_BUILD)/corpus/$$t spec/fuzz/corpus/$$t 2>&1 | tee $(FUZZ_BUILD)/$$t.log | \
	    grep -E '^(stat::|INFO: seed|==[0-9]+==|SUMMARY|Done)'; \
	  test $${PIPESTATUS[0]} = 0 || exit 1; \
	done

# ---- mutants: each safety guard must be able to fail (spec/mutants.lua; MUTANT=name runs one) ----
mutants: check-deps all
	lua5.4 spec/mutants.lua $(MUTANT)

# ---- lint ----
LUA_LINT_DIRS := lua spec examples rockspec
lint: lint-lua lint-c
lint-lua:
	luacheck -q $(wildcard $(LUA_LINT_DIRS))
lint-c:
	clang-format --dry-run --Werror csrc/*.c csrc/*.h
	cppcheck -q --error-exitcode=1 --enable=warning,portability,performance \
	  --suppress=missingIncludeSystem --suppress=toomanyconfigs --inline-suppr -I/usr/include/lua5.4 csrc
	clang-tidy -quiet --warnings-as-errors='*' $(SRCS) csrc/main.c -- -std=gnu11 -D_GNU_SOURCE $(INC_5.4) 2>/dev/null
format:
	clang-format -i csrc/*.c csrc/*.h

# ---- demo and bench ----
demo: check-deps all
	./$(BUILD)/rotor examples/demo.lua

# `eval "$(make -s sim)"`: the simulator keeps running (make sim-stop) with one seeded Genesys
# admin and app client and one Spreetail pair; the exports are also in $(SIM_DIR)/exports.env
SIM_DIR ?= $(BUILD)/sim
sim: all
	@spec/simulator/simctl stop $(SIM_DIR) >/dev/null 2>&1 || true
	@./$(BUILD)/rotor spec/simulator/sim_env.lua $(SIM_DIR)
sim-stop:
	@spec/simulator/simctl stop $(SIM_DIR)

# a fleet of three rotor hosts on one etcd store (3-member cluster and the simulator on loopback)
fleet-demo: check-deps all
	lua5.4 examples/fleet-demo.lua

# the official Genesys Cloud JS SDK it compares with is installed by npm into build/bench-sdk
# libcurl's own floor for the throughput part (a C client on the multi interface, no Lua)
$(BUILD)/curl_floor: spec/bench/curl_floor.c
	$(CC) -O2 -Wall -Wextra -o $@ $< $(LIBS)
bench: check-deps all $(BUILD)/curl_floor
	lua5.4 spec/bench/run.lua
# the same paths in instructions (valgrind's callgrind): steady where wall time is not
bench-instr: check-deps all $(BUILD)/curl_floor
	lua5.4 spec/bench/instr.lua

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/lua/5.4/rotor \
	  $(DESTDIR)$(PREFIX)/share/lua/5.4/rotor
	install -m 0755 $(BUILD)/rotor $(DESTDIR)$(PREFIX)/bin/rotor
	install -m 0755 $(BUILD)/5.4/rotor/core.so $(DESTDIR)$(PREFIX)/lib/lua/5.4/rotor/core.so
	cd lua && find rotor -name '*.lua' -exec install -D -m 0644 {} $(DESTDIR)$(PREFIX)/share/lua/5.4/{} \;

clean:
	rm -rf $(BUILD)

# ---- LuaRocks build (rockspec/rotor-scm-1.rockspec; `luarocks make` passes the variables) ----
# The rockspec runs `make rock-build` then `make rock-install` with LuaRocks' paths:
#   LUA_INCDIR, LIBFLAG, CFLAGS, CURL_INCDIR, CURL_LIBDIR, and INST_LUADIR, INST_LIBDIR,
#   INST_BINDIR; LUA_VERSION (5.1 for LuaJIT too) is read from LUA_INCDIR/lua.h unless given.
#   Nothing here changes the targets above.
# The `rotor` host embeds Lua 5.4 only: it is built and installed only when LUA_VERSION is 5.4.
LUA_INCDIR ?= /usr/include/lua5.4
# the Lua version of the headers built against (LuaRocks has no variable for it): 5.1 for LuaJIT
ifeq ($(origin LUA_VERSION),undefined)
LUA_VERSION := $(shell sed -n 's/^\#define LUA_VERSION_NUM[^0-9]*\([0-9]\)0\([0-9]\).*/\1.\2/p' $(LUA_INCDIR)/lua.h)
endif
LUA_LIBDIR ?=
LUA_HOSTLIB ?= -llua5.4
LIBFLAG ?= -shared
CURL_INCDIR ?= /usr/include
CURL_LIBDIR ?= /usr/lib
COMPAT53_INCDIR ?= /usr/include/lua5.1
INST_LUADIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
INST_LIBDIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
INST_BINDIR ?= $(PREFIX)/bin
ROCK_BUILD ?= $(BUILD)/rock-$(LUA_VERSION)
# lua-compat-5.3 sits in /usr/include/lua5.1 on Debian; -idirafter keeps LuaJIT's lua.h first
ROCK_INC := -I$(LUA_INCDIR) $(if $(filter 5.1,$(LUA_VERSION)),-idirafter $(COMPAT53_INCDIR)) \
            $(if $(filter-out /usr/include,$(CURL_INCDIR)),-I$(CURL_INCDIR))
ROCK_HOST := $(if $(filter 5.4,$(LUA_VERSION)),$(ROCK_BUILD)/bin/rotor)

.PHONY: rock-build rock-install rock-check-curl
rock-build: rock-check-curl $(ROCK_BUILD)/rotor/core.so $(ROCK_HOST)
	@$(if $(ROCK_HOST),:,echo "rotor: Lua $(LUA_VERSION): the rotor executable embeds Lua 5.4; skipped (the module is built)")

# LuaRocks only looks for curl/curl.h under CURL_DIR/include; Debian and Ubuntu keep it in the
# multiarch directory the compiler searches by itself: ask the compiler, and name the fix
rock-check-curl:
	@echo '#include <curl/curl.h>' | $(CC) $(ROCK_INC) -E -x c - >/dev/null 2>&1 || { \
	  echo "rotor: curl/curl.h not found (CURL_INCDIR=$(CURL_INCDIR)): install libcurl's headers" \
	    "(Debian: apt-get install libcurl4-openssl-dev) or pass CURL_INCDIR=<dir holding curl/curl.h>" >&2; \
	  exit 1; }

$(eval $(call CORE_RULES,$(ROCK_BUILD)/obj,$(ROCK_BUILD)/rotor/core.so,$(ROCK_INC),$(LIBFLAG) -L$(CURL_LIBDIR)))
$(eval $(call HOST_RULES,$(ROCK_BUILD)/obj,$(ROCK_BUILD)/bin/rotor,$(ROCK_INC),$(if $(LUA_LIBDIR),-L$(LUA_LIBDIR)) $(LUA_HOSTLIB)))
$(ROCK_BUILD)/bin/rotor: | $(ROCK_BUILD)/rotor/core.so

rock-install: rock-build
	install -d $(INST_LUADIR)/rotor $(INST_LIBDIR)/rotor
	cd lua && find rotor -name '*.lua' -exec install -D -m 0644 {} $(INST_LUADIR)/{} \;
	install -m 0755 $(ROCK_BUILD)/rotor/core.so $(INST_LIBDIR)/rotor/core.so
	$(if $(ROCK_HOST),install -d $(INST_BINDIR) && install -m 0755 $(ROCK_HOST) $(INST_BINDIR)/rotor,\
	  @echo "rotor: Lua $(LUA_VERSION): no rotor executable to install (it embeds Lua 5.4)")
