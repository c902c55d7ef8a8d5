/*
 * audience_eval.c
 *	  When audience memberships are evaluated: once per transaction, at its
 *	  commit, for every profile whose traits, computed traits or membership
 *	  of the graph changed in it.  A batch changes a profile's computed
 *	  traits chunk by chunk and its declared traits at the end; evaluating
 *	  once at commit sees the final values, so an entry and an exit never
 *	  both come out of one transaction and every change is recorded (and
 *	  emitted) exactly once.
 *
 *	  Profiles are gathered in memory; the first profile of a transaction
 *	  inserts a row into cdp.audience_pending, whose deferred constraint
 *	  trigger runs cdp.evaluate_audiences over them at commit.  A
 *	  subtransaction that rolls back takes its row (and trigger event) with
 *	  it: the next profile inserts another.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "pg_cdp.h"
#include "computed_traits.h"
#include "spi_util.h"

PG_FUNCTION_INFO_V1(cdp_profiles_changed);
PG_FUNCTION_INFO_V1(cdp_audiences_at_commit);

/* the transaction's changed profiles (TopTransactionContext) */
static HTAB *changed = NULL;
static LocalTransactionId changed_lxid = InvalidLocalTransactionId;

/* the subtransaction that inserted this transaction's pending row, 0: none */
static SubTransactionId pending_subid = InvalidSubTransactionId;
static bool callbacks_registered = false;

/* whether any audience is defined, looked up once per transaction */
static LocalTransactionId audiences_lxid = InvalidLocalTransactionId;
static bool audiences_exist = false;

static SPIPlanPtr exist_plan = NULL;
static SPIPlanPtr pending_plan = NULL;
static SPIPlanPtr evaluate_plan = NULL;
static SPIPlanPtr clear_plan = NULL;

static void
AudienceSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (pending_subid != mySubid)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		pending_subid = InvalidSubTransactionId;
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		pending_subid = parentSubid;
}

static void
AudienceXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		changed = NULL;
		changed_lxid = InvalidLocalTransactionId;
		pending_subid = InvalidSubTransactionId;
	}
}

/*
 * Whether any audience is defined.  Only a yes is kept for the rest of the
 * transaction: one may be defined later in it (a no kept would skip its
 * evaluations), and one dropped leaves nothing to evaluate.
 */
bool
CdpAudiencesExist(void)
{
	if (audiences_lxid != MyProc->lxid || !audiences_exist)
	{
		audiences_exist = CdpExecPlan(CdpPlan(&exist_plan,
											  "SELECT 1 FROM cdp.audiences LIMIT 1", 0, NULL),
									  NULL, NULL, SPI_OK_SELECT) > 0;
		audiences_lxid = MyProc->lxid;
	}
	return audiences_exist;
}

/*
 * These profiles' traits, computed traits or places in the graph changed:
 * their memberships are evaluated when the transaction commits.  The
 * caller is connected to SPI.
 */
void
CdpProfilesChanged(const int64 *profile_ids, int n)
{
	MemoryContext old;

	if (n == 0 || !CdpAudiencesExist())
		return;
	if (!callbacks_registered)
	{
		RegisterXactCallback(AudienceXactCallback, NULL);
		RegisterSubXactCallback(AudienceSubXactCallback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	if (changed == NULL || changed_lxid != MyProc->lxid)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(int64);
		ctl.hcxt = TopTransactionContext;
		changed = hash_create("cdp profiles changed", 1024, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		changed_lxid = MyProc->lxid;
	}
	for (int i = 0; i < n; i++)
		(void) hash_search(changed, &profile_ids[i], HASH_ENTER, NULL);
	MemoryContextSwitchTo(old);

	if (pending_subid == InvalidSubTransactionId)
	{
		CdpExecPlan(CdpPlan(&pending_plan,
							"INSERT INTO cdp.audience_pending DEFAULT VALUES", 0, NULL),
					NULL, NULL, SPI_OK_INSERT);
		pending_subid = GetCurrentSubTransactionId();
	}
}

/* cdp.profiles_changed(ids): the same, from SQL */
Datum
cdp_profiles_changed(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int64	   *ids;
	int			k = 0;

	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &n);
	ids = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			ids[k++] = DatumGetInt64(elems[i]);
	SPI_connect();
	CdpProfilesChanged(ids, k);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * An ingest worker's batch that wrote to the change feed commits as the
 * server's synchronous_commit says, not without waiting as its other
 * batches do (ingest_worker.c): a consumer acts on what it reads in
 * cdp.audience_changes, so a change must not be visible before it is
 * durable.  Called at commit, from the deferred trigger, so the setting is
 * at the transaction's own level and ends with it.
 */
static void
CommitDurably(void)
{
	(void) set_config_option("synchronous_commit",
							 GetConfigOptionResetString("synchronous_commit"),
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * The deferred trigger on cdp.audience_pending: evaluate the audiences of
 * the transaction's changed profiles, once (the first pending row of the
 * transaction to fire does it; a later one finds nothing left).
 */
Datum
cdp_audiences_at_commit(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	int64	   *ids;
	int64	   *id;
	int			n = 0;
	Oid			argtype = INT8ARRAYOID;
	Datum		arg;
	Oid			save_user;
	int			save_sec;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "cdp_audiences_at_commit: not called as a trigger");
	if (changed == NULL || changed_lxid != MyProc->lxid || hash_get_num_entries(changed) == 0)
		return PointerGetDatum(NULL);
	ids = palloc(sizeof(int64) * hash_get_num_entries(changed));
	hash_seq_init(&seq, changed);
	while ((id = hash_seq_search(&seq)) != NULL)
		ids[n++] = *id;
	hash_destroy(changed);
	changed = NULL;

	/*
	 * A deferred trigger fires at commit as the session's user, outside the
	 * SECURITY DEFINER function (process_inbox, set_consent, ...) that
	 * changed the profiles: evaluate as pg_cdp's owner, who owns this table.
	 * An error aborts the transaction, which restores the user.
	 */
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(((TriggerData *) fcinfo->context)->tg_relation->rd_rel->relowner,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE);
	SPI_connect();
	arg = CdpInt8Array(ids, n);
	CdpExecPlan(CdpPlan(&evaluate_plan, "SELECT cdp.evaluate_audiences($1)", 1, &argtype),
				&arg, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		fed = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull && DatumGetInt64(fed) > 0 && cdp_batch_commits_async)
			CommitDurably();
	}
	CdpExecPlan(CdpPlan(&clear_plan, "DELETE FROM cdp.audience_pending", 0, NULL),
				NULL, NULL, SPI_OK_DELETE);
	SPI_finish();
	SetUserIdAndSecContext(save_user, save_sec);
	/* fired early (SET CONSTRAINTS ... IMMEDIATE): later changes need a new row */
	pending_subid = InvalidSubTransactionId;
	return PointerGetDatum(NULL);
}
