# pg_cdp: build with PGXS.  `make run` starts a local cluster with pg_cdp,
# `make test` runs every suite; see README.md.

EXTENSION   = pg_cdp
EXTVERSION  = 0.1.0
MODULE_big  = pg_cdp
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*/*.c)))
DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
PG_CPPFLAGS = -I$(srcdir)/src/include
# PG headers trip -Wextra's unused-parameter and sign-compare noise; the rest stays on.
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers $(if $(WERROR),-Werror)

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS =
ISOLATION      = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation

EXTRA_CLEAN = $(DATA_built) test/fuzz/build

# PostgreSQL 15's own pg_config when it is there, whatever else is installed
PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
else
# `make test` and `make run` install the build dependencies themselves
all install installcheck:
	@echo "PostgreSQL 15 development files are missing: run 'make deps' first"; exit 1
endif

# every object depends on every header: few enough to rebuild all on a change
$(OBJS): $(wildcard src/include/*.h)

# the HTTP endpoint: libmicrohttpd parses HTTP, zlib decodes gzip bodies
SHLIB_LINK += -lmicrohttpd -lz

# messageId digests call OpenSSL directly when the server was built with it
ifeq ($(with_ssl),openssl)
SHLIB_LINK += -lcrypto
endif

$(DATA_built): $(sort $(wildcard src/sql/*.sql))
	cat $^ > $@

.PHONY: deps test fuzz fuzz-http run stop
deps:
	@bash .ci/deps.sh

test:
	@bash .ci/test.sh

# make fuzz [SEED=n] [COUNT=messages] [MAX_RSS_MB=512]: a long fuzz run
fuzz:
	@SEED="$(SEED)" COUNT="$(COUNT)" MAX_RSS_MB="$(MAX_RSS_MB)" bash .ci/fuzz.sh

# make fuzz-http [FUZZ_SECONDS=20] [FUZZ_SEED=1]: libFuzzer over the parsing of
# HTTP requests (src/http/http_request.c, src/http/http_inflate.c, built as frontend code)
FUZZ_SECONDS ?= 20
FUZZ_SEED    ?= 1
FUZZ_CC      ?= clang
HTTP_FUZZER  = test/fuzz/build/http_request_fuzz
HTTP_FUZZ_SRC = test/fuzz/http_request_fuzz.c src/http/http_request.c src/http/http_inflate.c src/common/json_token_name.c
# the frontend libraries: in pkglibdir on Debian, libdir in a source build
PG_FE_LIBDIR = $(dir $(firstword $(wildcard $(shell $(PG_CONFIG) --pkglibdir)/libpgcommon.a \
                                           $(shell $(PG_CONFIG) --libdir)/libpgcommon.a)))

$(HTTP_FUZZER): $(HTTP_FUZZ_SRC) src/include/http_request.h src/include/http_inflate.h src/include/json_token_name.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		-Wall -Wno-ignored-attributes $(if $(WERROR),-Werror) -DFRONTEND -I$(srcdir)/src/include \
		-I$(shell $(PG_CONFIG) --includedir-server) -I$(shell $(PG_CONFIG) --includedir) \
		$(HTTP_FUZZ_SRC) $(PG_FE_LIBDIR)libpgcommon.a $(PG_FE_LIBDIR)libpgport.a -lz -o $@

fuzz-http: $(HTTP_FUZZER)
	@FUZZ_SECONDS="$(FUZZ_SECONDS)" FUZZ_SEED="$(FUZZ_SEED)" bash .ci/fuzz_http.sh $(HTTP_FUZZER)

run:
	@bash .ci/cluster.sh start

stop:
	@bash .ci/cluster.sh stop
