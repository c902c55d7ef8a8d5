/*
 * spi_util.c
 *	  The few SPI patterns every file uses: plans prepared once per backend,
 *	  and execution that checks the result and leaves the caller in its own
 *	  memory context (SPI otherwise returns in its procedure context, where
 *	  allocations live until SPI_finish).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "utils/guc.h"

#include "spi_util.h"

/* the plan in *slot, prepared with cursor options and kept on first use */
static SPIPlanPtr
PlanWithOptions(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes, int options)
{
	if (*slot == NULL)
	{
		MemoryContext cxt = CurrentMemoryContext;
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, options);

		MemoryContextSwitchTo(cxt);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed (%s): %s", SPI_result_code_string(SPI_result), sql);
		SPI_keepplan(plan);
		*slot = plan;
	}
	return *slot;
}

/* the plan in *slot, prepared and kept on first use */
SPIPlanPtr
CdpPlan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	return PlanWithOptions(slot, sql, nargs, argtypes, 0);
}

/*
 * Like CdpPlan, for statements over arrays whose tables grow while one call
 * runs (the identity write-back inside a long process_inbox): planned anew
 * for every execution with the arrays' real sizes and the tables' current
 * sizes.  A cached generic plan made while the tables were small would keep
 * hashing whole tables per batch, making a long call quadratic.
 */
SPIPlanPtr
CdpPlanReplanned(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	return PlanWithOptions(slot, sql, nargs, argtypes, CURSOR_OPT_CUSTOM_PLAN);
}

/*
 * Like CdpPlan, never planned for the arguments' values: for a probe of a
 * primary key with a large array (= ANY), whose custom plans estimated the
 * selectivity of every element, each time.  Prepare it between
 * CdpBeginIndexedPlans and CdpEndIndexedPlans, so that it probes the index.
 */
SPIPlanPtr
CdpPlanGeneric(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	return PlanWithOptions(slot, sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
}

/*
 * Plans that name a type of the extension by oid (typid, as it is now)
 * are prepared again when it changed (the extension was dropped and made
 * again in this session): free them all and remember the new oid.
 */
void
CdpCheckTypePlans(SPIPlanPtr *plans, int n, Oid *plans_type_oid, Oid typid)
{
	if (typid == *plans_type_oid)
		return;
	for (int i = 0; i < n; i++)
	{
		if (plans[i] != NULL)
			SPI_freeplan(plans[i]);
		plans[i] = NULL;
	}
	*plans_type_oid = typid;
}

/* run a plan; expected is the SPI_OK_* code it must return */
uint64
CdpExecPlan(SPIPlanPtr plan, Datum *args, const char *nulls, int expected)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute_plan(plan, args, nulls, false, 0);

	MemoryContextSwitchTo(cxt);
	if (rc != expected)
		elog(ERROR, "pg_cdp query failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

/* run a one-off statement (DDL, rare queries) */
uint64
CdpExecSql(const char *sql, int expected)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute(sql, false, 0);

	MemoryContextSwitchTo(cxt);
	if (rc != expected)
		elog(ERROR, "pg_cdp query failed (%s): %s", SPI_result_code_string(rc), sql);
	return SPI_processed;
}

/* run a one-off statement with parameters */
uint64
CdpExecArgs(const char *sql, int nargs, Oid *argtypes, Datum *args, int expected)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, args, NULL, false, 0);

	MemoryContextSwitchTo(cxt);
	if (rc != expected)
		elog(ERROR, "pg_cdp query failed (%s): %s", SPI_result_code_string(rc), sql);
	return SPI_processed;
}

/* a one-dimensional array of n elements of elemtype, as a Datum */
Datum
CdpArray(Datum *elems, int n, Oid elemtype)
{
	int16		typlen;
	bool		byval;
	char		align;

	get_typlenbyvalalign(elemtype, &typlen, &byval, &align);
	return PointerGetDatum(construct_array(elems, n, elemtype, typlen, byval, align));
}

/* bigint[] from n values */
Datum
CdpInt8Array(int64 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return CdpArray(d, n, INT8OID);
}

/*
 * Until CdpEndIndexedPlans(level): statements planned meanwhile use index
 * lookups, never a scan of a whole table.  The identity write-back touches a
 * few rows of tables that grow inside one long call, where the statistics
 * lag far behind; a hash or merge join chosen from them would read every
 * row each batch.  Undone with the (sub)transaction on an error.
 *
 * JIT is off for them too: a scan that has no index to use instead (a
 * one-row table) costs more than the JIT thresholds once disabled, and
 * compiling that plan took 0.1 to 0.3 s on every execution.
 */
int
CdpBeginIndexedPlans(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

void
CdpEndIndexedPlans(int level)
{
	AtEOXact_GUC(true, level);
}
