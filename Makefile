# pg_cdp: build with PGXS.  `make run` starts a local cluster with pg_cdp,
# `make test` runs every suite; see README.md.

EXTENSION   = pg_cdp
EXTVERSION  = 0.1.0
MODULE_big  = pg_cdp
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA_built  = $(EXTENSION)--$(EXTVERSION).sql
PG_CPPFLAGS = -I$(srcdir)/src/include
# PG headers trip -Wextra's unused-parameter and sign-compare noise; the rest stays on.
PG_CFLAGS   = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers $(if $(WERROR),-Werror)

REGRESS      = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS =
ISOLATION      = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation

EXTRA_CLEAN = $(DATA_built)

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

.PHONY: deps test fuzz run stop
deps:
	@bash .ci/deps.sh

test:
	@bash .ci/test.sh

# make fuzz [SEED=n] [COUNT=messages] [MAX_RSS_MB=512]: a long fuzz run
fuzz:
	@SEED="$(SEED)" COUNT="$(COUNT)" MAX_RSS_MB="$(MAX_RSS_MB)" bash .ci/fuzz.sh

run:
	@bash .ci/cluster.sh start

stop:
	@bash .ci/cluster.sh stop
