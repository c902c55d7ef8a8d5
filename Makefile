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
REGRESS_OPTS = --load-extension=pg_cdp
ISOLATION      = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation --load-extension=pg_cdp

EXTRA_CLEAN = $(DATA_built)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(DATA_built): $(sort $(wildcard src/sql/*.sql))
	cat $^ > $@

.PHONY: deps test run stop
deps:
	@bash scripts/deps.sh

test:
	@bash scripts/test.sh

run:
	@bash scripts/run.sh start

stop:
	@bash scripts/run.sh stop
