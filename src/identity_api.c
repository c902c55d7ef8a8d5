/*
 * identity_api.c
 *	  SQL functions over the identity graph: cdp.link, cdp.explain_link and
 *	  cdp.split_profile.  (Lookups like cdp.resolve are plain SQL.)
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"

static int64
ProfileOf(CdpIdentifier *id, bool must_exist)
{
	Oid			argtypes[1] = {CdpIdentifierTypeOid()};
	Datum		args[1] = {PointerGetDatum(id)};
	bool		isnull;
	int64		profile;

	if (SPI_execute_with_args("SELECT profile_id FROM cdp.identities WHERE identifier = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up an identifier failed");
	if (SPI_processed == 0)
	{
		if (must_exist)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("identifier \"%s\" is not known", CdpIdentifierToCString(id))));
		return 0;
	}
	profile = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return profile;
}

static char *
NewMessageId(const char *prefix)
{
	Datum		uuid = DirectFunctionCall1(gen_random_uuid, (Datum) 0);

	return psprintf("%s-%s", prefix, DatumGetCString(DirectFunctionCall1(uuid_out, uuid)));
}

PG_FUNCTION_INFO_V1(cdp_link);

/* cdp.link(a, b, source): evidence from outside (a CRM import), same rules */
Datum
cdp_link(PG_FUNCTION_ARGS)
{
	CdpIdentifier *a = PG_GETARG_IDENTIFIER_P(0);
	CdpIdentifier *b = PG_GETARG_IDENTIFIER_P(1);
	char	   *source = text_to_cstring(PG_GETARG_TEXT_PP(2));
	int64		profile;

	SPI_connect();
	profile = CdpLinkIdentifiers(a, b, source, NewMessageId("link"));
	SPI_finish();
	if (profile == 0)
		PG_RETURN_NULL();		/* both blocked: nothing to link */
	PG_RETURN_INT64(profile);
}

/* a link from the evidence: two identifiers, the message that joined them */
typedef struct Hop
{
	int			parent;			/* index of the node we came from, -1 at the start */
	char	   *message_id;
	TimestampTz linked_at;
	bool		seen;
} Hop;

PG_FUNCTION_INFO_V1(cdp_explain_link);

/*
 * cdp.explain_link(a, b): the shortest chain of evidence (earliest messages
 * first) that put a and b in one profile; no rows when they are apart.
 */
Datum
cdp_explain_link(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CdpIdentifier *a = PG_GETARG_IDENTIFIER_P(0);
	CdpIdentifier *b = PG_GETARG_IDENTIFIER_P(1);
	MemoryContext cxt;
	Oid			idtype;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	int64		pa,
				pb;
	uint64		nrows;
	CdpIdentifier **members;
	int			nmembers;
	int			ia = -1,
				ib = -1;
	Hop		   *hops;
	int		   *queue;
	int			qhead = 0,
				qtail = 0;
	HeapTuple  *rows;
	TupleDesc	rowdesc;

	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	SPI_connect();
	MemoryContextSwitchTo(cxt);
	idtype = CdpIdentifierTypeOid();
	pa = ProfileOf(a, true);
	pb = ProfileOf(b, true);
	if (pa != pb || CdpIdentifierCompare(a, b) == 0)
	{
		SPI_finish();
		return (Datum) 0;
	}

	/* the profile's identifiers, and the evidence among them in ingest order */
	args[0] = Int64GetDatum(pa);
	if (SPI_execute_with_args("SELECT identifier FROM cdp.identities WHERE profile_id = $1 "
							  "ORDER BY identifier", 1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the profile failed");
	MemoryContextSwitchTo(cxt);
	nmembers = (int) SPI_processed;
	members = palloc(sizeof(CdpIdentifier *) * nmembers);
	for (int i = 0; i < nmembers; i++)
	{
		bool		isnull;

		members[i] = (CdpIdentifier *) PG_DETOAST_DATUM_COPY(SPI_getbinval(SPI_tuptable->vals[i],
																		  SPI_tuptable->tupdesc, 1, &isnull));
		if (CdpIdentifierCompare(members[i], a) == 0)
			ia = i;
		if (CdpIdentifierCompare(members[i], b) == 0)
			ib = i;
	}
	if (SPI_execute_with_args("SELECT e.message_id, e.observed_at, e.linked "
							  "FROM cdp.identity_evidence e "
							  "WHERE e.linked && (SELECT array_agg(identifier) FROM cdp.identities "
							  "                   WHERE profile_id = $1) "
							  "ORDER BY e.seq", 1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the evidence failed");
	MemoryContextSwitchTo(cxt);
	nrows = SPI_processed;
	rows = SPI_tuptable->vals;
	rowdesc = SPI_tuptable->tupdesc;

	/* breadth-first from a; each evidence row joins all it linked */
	hops = palloc0(sizeof(Hop) * nmembers);
	queue = palloc(sizeof(int) * nmembers);
	hops[ia].seen = true;
	hops[ia].parent = -1;
	queue[qtail++] = ia;
	while (qhead < qtail && !hops[ib].seen)
	{
		int			cur = queue[qhead++];

		for (uint64 r = 0; r < nrows && !hops[ib].seen; r++)
		{
			bool		isnull;
			ArrayType  *linked = DatumGetArrayTypeP(SPI_getbinval(rows[r], rowdesc, 3, &isnull));
			Datum	   *elems;
			int			nelems;
			bool		has_cur = false;

			deconstruct_array(linked, idtype, -1, false, TYPALIGN_INT, &elems, NULL, &nelems);
			for (int k = 0; k < nelems && !has_cur; k++)
				has_cur = CdpIdentifierCompare(DatumGetIdentifierP(elems[k]), members[cur]) == 0;
			if (!has_cur)
				continue;
			for (int k = 0; k < nelems; k++)
			{
				CdpIdentifier *id = DatumGetIdentifierP(elems[k]);

				for (int m = 0; m < nmembers; m++)
				{
					if (hops[m].seen || CdpIdentifierCompare(id, members[m]) != 0)
						continue;
					hops[m].seen = true;
					hops[m].parent = cur;
					hops[m].message_id = TextDatumGetCString(SPI_getbinval(rows[r], rowdesc, 1, &isnull));
					hops[m].linked_at = DatumGetTimestampTz(SPI_getbinval(rows[r], rowdesc, 2, &isnull));
					queue[qtail++] = m;
				}
			}
		}
	}

	if (hops[ib].seen)
	{
		int			len = 0;
		int		   *path = palloc(sizeof(int) * nmembers);

		for (int m = ib; m != ia; m = hops[m].parent)
			path[len++] = m;
		for (int step = 1; step <= len; step++)
		{
			int			to = path[len - step];
			int			from = hops[to].parent;
			Datum		values[5];
			bool		nulls[5] = {false, false, false, false, false};

			values[0] = Int32GetDatum(step);
			values[1] = PointerGetDatum(members[from]);
			values[2] = PointerGetDatum(members[to]);
			values[3] = CStringGetTextDatum(hops[to].message_id);
			values[4] = TimestampTzGetDatum(hops[to].linked_at);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	SPI_finish();
	return (Datum) 0;
}

/* union-find over member indexes, for recomputing a component */
static int
Find(int *parent, int x)
{
	while (parent[x] != x)
	{
		parent[x] = parent[parent[x]];
		x = parent[x];
	}
	return x;
}

PG_FUNCTION_INFO_V1(cdp_split_profile);

/*
 * cdp.split_profile(profile_id, keep_out): take keep_out's evidence out of
 * the profile, recompute what the rest of the evidence still joins, and
 * record keep_out as kept apart from each resulting part.  Returns the
 * resulting profiles (the one that keeps the id first).
 */
Datum
cdp_split_profile(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		profile_id = PG_GETARG_INT64(0);
	CdpIdentifier *keep_out = PG_GETARG_IDENTIFIER_P(1);
	MemoryContext cxt;
	Oid			idtype;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(profile_id)};
	bool		isnull;
	CdpIdentifier **members;
	TimestampTz *linked_at;
	int			nmembers;
	int			iout = -1;
	int		   *parent;
	int64	   *new_profile;
	int			root_keep;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	cxt = CurrentMemoryContext;
	SPI_connect();
	MemoryContextSwitchTo(cxt);
	idtype = CdpIdentifierTypeOid();

	/* the same lock every writer of the graph takes */
	DirectFunctionCall2(pg_advisory_xact_lock_int4, Int32GetDatum(CDP_LOCK_CLASS),
						Int32GetDatum(CDP_LOCK_IDENTITY));
	if (CdpExecArgs("SELECT merged_into FROM cdp.profile_records WHERE profile_id = $1 FOR UPDATE",
					1, argtypes, args, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("profile " INT64_FORMAT " does not exist", profile_id)));
	{
		Datum		into = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("profile " INT64_FORMAT " was merged into profile " INT64_FORMAT,
							profile_id, DatumGetInt64(into)),
					 errhint("Split profile " INT64_FORMAT " instead.", DatumGetInt64(into))));
	}

	if (SPI_execute_with_args("SELECT identifier, linked_at FROM cdp.identities "
							  "WHERE profile_id = $1 ORDER BY linked_at, identifier",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the profile failed");
	MemoryContextSwitchTo(cxt);
	nmembers = (int) SPI_processed;
	members = palloc(sizeof(CdpIdentifier *) * Max(nmembers, 1));
	linked_at = palloc(sizeof(TimestampTz) * Max(nmembers, 1));
	for (int i = 0; i < nmembers; i++)
	{
		members[i] = (CdpIdentifier *) PG_DETOAST_DATUM_COPY(SPI_getbinval(SPI_tuptable->vals[i],
																		  SPI_tuptable->tupdesc, 1, &isnull));
		linked_at[i] = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		if (CdpIdentifierCompare(members[i], keep_out) == 0)
			iout = i;
	}
	if (iout < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("identifier \"%s\" is not in profile " INT64_FORMAT,
						CdpIdentifierToCString(keep_out), profile_id)));

	/* what the evidence joins once keep_out is taken out of every row */
	parent = palloc(sizeof(int) * nmembers);
	for (int i = 0; i < nmembers; i++)
		parent[i] = i;
	if (SPI_execute_with_args("SELECT linked FROM cdp.identity_evidence "
							  "WHERE linked && (SELECT array_agg(identifier) FROM cdp.identities "
							  "                 WHERE profile_id = $1)",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the evidence failed");
	MemoryContextSwitchTo(cxt);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		ArrayType  *linked = DatumGetArrayTypeP(SPI_getbinval(SPI_tuptable->vals[r],
															  SPI_tuptable->tupdesc, 1, &isnull));
		Datum	   *elems;
		int			nelems;
		int			first = -1;

		deconstruct_array(linked, idtype, -1, false, TYPALIGN_INT, &elems, NULL, &nelems);
		for (int k = 0; k < nelems; k++)
		{
			for (int m = 0; m < nmembers; m++)
			{
				if (m == iout || CdpIdentifierCompare(DatumGetIdentifierP(elems[k]), members[m]) != 0)
					continue;
				if (first < 0)
					first = m;
				else
					parent[Find(parent, m)] = Find(parent, first);
			}
		}
	}

	/*
	 * The part holding the earliest linked identifier (other than keep_out)
	 * keeps the profile id; every other part, and keep_out, get new ones.
	 */
	new_profile = palloc0(sizeof(int64) * nmembers);
	root_keep = -1;
	for (int i = 0; i < nmembers && root_keep < 0; i++)
		if (i != iout)
			root_keep = Find(parent, i);
	for (int i = 0; i < nmembers; i++)
	{
		int			root = (i == iout) ? i : Find(parent, i);

		if (root == root_keep)
			new_profile[i] = profile_id;
		else if (new_profile[root] == 0 || root == i)
		{
			if (new_profile[root] == 0)
				new_profile[root] = CdpNextProfileId();
			new_profile[i] = new_profile[root];
		}
		else
			new_profile[i] = new_profile[root];
	}
	if (root_keep >= 0)
		new_profile[root_keep] = profile_id;

	/* the parts that leave: their profiles, then their identities, in one go each */
	{
		Datum	   *moved = palloc(sizeof(Datum) * Max(nmembers, 1));
		int64	   *to = palloc(sizeof(int64) * Max(nmembers, 1));
		int			nmoved = 0;
		Oid			types[2] = {get_array_type(idtype), INT8ARRAYOID};
		Datum		vals[2];

		for (int i = 0; i < nmembers; i++)
		{
			if (new_profile[i] == profile_id)
				continue;
			moved[nmoved] = PointerGetDatum(members[i]);
			to[nmoved] = new_profile[i];
			nmoved++;
		}
		if (nmoved > 0)
		{
			vals[0] = CdpArray(moved, nmoved, idtype);
			vals[1] = CdpInt8Array(to, nmoved);
			CdpExecArgs("INSERT INTO cdp.profile_records (profile_id) "
						"SELECT DISTINCT p FROM unnest($2) p ORDER BY p",
						2, types, vals, SPI_OK_INSERT);
			CdpExecArgs("UPDATE cdp.identities i SET profile_id = u.p "
						"FROM ROWS FROM (unnest($1), unnest($2)) AS u(id, p) WHERE i.identifier = u.id",
						2, types, vals, SPI_OK_UPDATE);
		}
	}

	/* sessions that read this profile before the split must read again */
	CdpExecArgs("UPDATE cdp.profile_records SET version = version + 1 WHERE profile_id = $1",
				1, argtypes, args, SPI_OK_UPDATE);

	/* keep_out stays apart from every part it left, also after rebuilds */
	{
		CdpIdentifier **rest = palloc(sizeof(CdpIdentifier *) * nmembers);
		CdpIdentifier **anchors = palloc(sizeof(CdpIdentifier *) * nmembers);
		int			nrest = 0,
					nanchors = 0;
		Oid			types[3] = {idtype, get_array_type(idtype), get_array_type(idtype)};
		Datum		vals[3];

		for (int i = 0; i < nmembers; i++)
		{
			bool		first_of_part = true;

			if (i == iout)
				continue;
			rest[nrest++] = members[i];
			for (int k = 0; k < i; k++)
				first_of_part &= (k == iout || new_profile[k] != new_profile[i]);
			if (first_of_part)
				anchors[nanchors++] = members[i];
		}
		vals[0] = PointerGetDatum(keep_out);
		vals[1] = PointerGetDatum(construct_array((Datum *) rest, nrest, idtype, -1, false, TYPALIGN_INT));
		vals[2] = PointerGetDatum(construct_array((Datum *) anchors, nanchors, idtype, -1, false,
												  TYPALIGN_INT));
		CdpExecArgs("INSERT INTO cdp.identity_splits (keep_out, members, anchors) VALUES ($1, $2, $3)",
					3, types, vals, SPI_OK_INSERT);
	}

	/* the resulting profiles: the one keeping the id first */
	{
		Datum		values[1];
		bool		nulls[1] = {false};

		values[0] = Int64GetDatum(profile_id);
		if (root_keep >= 0)
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		for (int i = 0; i < nmembers; i++)
		{
			bool		first_of_part = new_profile[i] != profile_id;

			for (int k = 0; k < i && first_of_part; k++)
				first_of_part = new_profile[k] != new_profile[i];
			if (!first_of_part)
				continue;
			values[0] = Int64GetDatum(new_profile[i]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	SPI_finish();
	return (Datum) 0;
}
