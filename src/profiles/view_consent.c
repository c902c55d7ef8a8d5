/*
 * view_consent.c
 *	  cdp.consent_granted(consent jsonb, purpose text): whether a profile's
 *	  derived consent grants a purpose, the purpose's default when it holds
 *	  no decision.  Profile and event views call it for every row and trait
 *	  column, so it reads the decision in place and looks the default up once
 *	  per call site and query, straight from cdp.purposes: analysts reading a
 *	  view have no privilege on that table, and need none.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "executor/tuptable.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_cdp.h"

/*
 * A call site's purpose and its default, looked up on first need and kept
 * for one statement: the transaction and command its snapshot saw (a
 * PL/pgSQL expression keeps its call site for the whole transaction).
 */
typedef struct PurposeDefault
{
	char	   *purpose;
	bool		looked_up;
	bool		granted;
	LocalTransactionId lxid;
	CommandId	cid;
} PurposeDefault;

/* a key of a jsonb object, found in place (NULL when absent) */
static JsonbValue *
FindKey(JsonbContainer *object, const char *key, int len)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = len;
	return findJsonbValueFromContainer(object, JB_FOBJECT, &k);
}

/*
 * The default_granted of a purpose in cdp.purposes under the statement's
 * snapshot; false for a purpose that does not exist.  A scan of a table of
 * a handful of rows.
 */
static bool
ReadPurposeDefault(const char *purpose)
{
	Oid			relid = get_relname_relid("purposes", get_namespace_oid("cdp", false));
	Relation	rel;
	TableScanDesc scan;
	TupleTableSlot *slot;
	AttrNumber	name_att;
	AttrNumber	default_att;
	bool		granted = false;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table cdp.purposes does not exist")));
	name_att = get_attnum(relid, "name");
	default_att = get_attnum(relid, "default_granted");
	rel = table_open(relid, AccessShareLock);
	slot = table_slot_create(rel, NULL);
	scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		name = slot_getattr(slot, name_att, &isnull);

		if (!isnull && strcmp(TextDatumGetCString(name), purpose) == 0)
		{
			Datum		d = slot_getattr(slot, default_att, &isnull);

			granted = !isnull && DatumGetBool(d);
			break;
		}
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, AccessShareLock);
	return granted;
}

PG_FUNCTION_INFO_V1(cdp_consent_granted);

/*
 * cdp.consent_granted(consent jsonb, purpose text) → bool: consent's
 * decision for purpose ({"purpose": {"granted": bool, ...}}), else the
 * purpose's default; false for an unknown purpose.
 */
Datum
cdp_consent_granted(PG_FUNCTION_ARGS)
{
	text	   *purpose;
	PurposeDefault *cache = (PurposeDefault *) fcinfo->flinfo->fn_extra;
	char	   *p;

	if (PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	purpose = PG_GETARG_TEXT_PP(1);
	if (!PG_ARGISNULL(0))
	{
		Jsonb	   *consent = PG_GETARG_JSONB_P(0);

		if (JB_ROOT_IS_OBJECT(consent))
		{
			JsonbValue *decision = FindKey(&consent->root, VARDATA_ANY(purpose),
										   VARSIZE_ANY_EXHDR(purpose));

			if (decision != NULL && decision->type == jbvBinary &&
				JsonContainerIsObject(decision->val.binary.data))
			{
				JsonbValue *granted = FindKey(decision->val.binary.data, "granted", 7);

				if (granted != NULL && granted->type == jbvBool)
					PG_RETURN_BOOL(granted->val.boolean);
			}
		}
	}

	p = text_to_cstring(purpose);
	if (cache == NULL || strcmp(cache->purpose, p) != 0)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		if (cache == NULL)
			cache = palloc0(sizeof(PurposeDefault));
		else
			pfree(cache->purpose);
		cache->purpose = pstrdup(p);
		cache->looked_up = false;
		fcinfo->flinfo->fn_extra = cache;
		MemoryContextSwitchTo(old);
	}
	if (!cache->looked_up || cache->lxid != MyProc->lxid ||
		cache->cid != GetActiveSnapshot()->curcid)
	{
		cache->granted = ReadPurposeDefault(p);
		cache->looked_up = true;
		cache->lxid = MyProc->lxid;
		cache->cid = GetActiveSnapshot()->curcid;
	}
	PG_RETURN_BOOL(cache->granted);
}
