/*
 * identity_api.c
 *	  SQL functions over the identity graph: cdp.link, cdp.explain_link and
 *	  cdp.split_profile.  (cdp.resolve is in identity_lookup.c.)
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
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
	/* a forgotten person's identifier must not make a profile again */
	CdpCheckNotSuppressed(a);
	CdpCheckNotSuppressed(b);
	profile = CdpLinkIdentifiers(a, b, source, NewMessageId("link"));
	SPI_finish();
	if (profile == 0)
		PG_RETURN_NULL();		/* both blocked: nothing to link */
	PG_RETURN_INT64(profile);
}

/*
 * A profile's identifiers (by linked_at, then identifier) and the links
 * between them that hold: the pairs of cdp.identity_pairs with both ends in
 * the profile, less those a split took apart and those whose message did not
 * link both ends (a rule refused one).  Links come in evidence order.
 */
typedef struct ProfileLinks
{
	int			nmembers;
	CdpIdentifier **members;
	TimestampTz *linked_at;
	int			nlinks;
	int		   *from;			/* member indexes */
	int		   *to;
	char	  **message_id;
	TimestampTz *observed_at;
} ProfileLinks;

/*
 * Read a profile and the links among its identifiers, set-based: one probe
 * of the pair table per identifier, whatever the evidence holds elsewhere.
 * Allocates in the current context (the caller's, not SPI's).
 */
static ProfileLinks *
LoadProfileLinks(int64 profile_id, bool read_only)
{
	MemoryContext cxt = CurrentMemoryContext;
	ProfileLinks *pl = palloc0(sizeof(ProfileLinks));
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1] = {Int64GetDatum(profile_id)};
	bool		isnull;

	if (SPI_execute_with_args("SELECT identifier, linked_at FROM cdp.identities "
							  "WHERE profile_id = $1 ORDER BY linked_at, identifier",
							  1, argtypes, args, NULL, read_only, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the profile failed");
	MemoryContextSwitchTo(cxt);
	pl->nmembers = (int) SPI_processed;
	pl->members = palloc(sizeof(CdpIdentifier *) * Max(pl->nmembers, 1));
	pl->linked_at = palloc(sizeof(TimestampTz) * Max(pl->nmembers, 1));
	for (int i = 0; i < pl->nmembers; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];

		pl->members[i] = (CdpIdentifier *) PG_DETOAST_DATUM_COPY(SPI_getbinval(tup, SPI_tuptable->tupdesc,
																			   1, &isnull));
		pl->linked_at[i] = DatumGetTimestampTz(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	CHECK_FOR_INTERRUPTS();

	if (SPI_execute_with_args("WITH m AS MATERIALIZED ("
							  "  SELECT identifier, (row_number() OVER (ORDER BY linked_at, identifier))::int4 - 1 AS k "
							  "    FROM cdp.identities WHERE profile_id = $1), "
							  "cut AS (SELECT DISTINCT least(s.keep_out, u.y) AS a, greatest(s.keep_out, u.y) AS b "
							  "          FROM cdp.identity_splits s JOIN m ON m.identifier = s.keep_out, "
							  "               unnest(s.members) u(y)) "
							  "SELECT ma.k, mb.k, p.message_id, p.observed_at "
							  "  FROM m ma JOIN cdp.identity_pairs p ON p.a = ma.identifier "
							  "  JOIN m mb ON mb.identifier = p.b "
							  "  LEFT JOIN cut ON cut.a = p.a AND cut.b = p.b "
							  "  LEFT JOIN cdp.identity_evidence e ON e.seq = p.seq "
							  " WHERE cut.a IS NULL "
							  "   AND (e.seq IS NULL OR e.linked @> ARRAY[p.a, p.b]) "
							  " ORDER BY p.seq, p.a, p.b",
							  1, argtypes, args, NULL, read_only, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the links of the profile failed");
	MemoryContextSwitchTo(cxt);
	pl->nlinks = (int) SPI_processed;
	pl->from = palloc(sizeof(int) * Max(pl->nlinks, 1));
	pl->to = palloc(sizeof(int) * Max(pl->nlinks, 1));
	pl->message_id = palloc(sizeof(char *) * Max(pl->nlinks, 1));
	pl->observed_at = palloc(sizeof(TimestampTz) * Max(pl->nlinks, 1));
	for (int l = 0; l < pl->nlinks; l++)
	{
		HeapTuple	tup = SPI_tuptable->vals[l];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		pl->from[l] = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		pl->to[l] = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		if (pl->from[l] < 0 || pl->from[l] >= pl->nmembers || pl->to[l] < 0 || pl->to[l] >= pl->nmembers)
			elog(ERROR, "profile " INT64_FORMAT " changed while it was read", profile_id);
		pl->message_id[l] = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		pl->observed_at[l] = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		if ((l & 1023) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	SPI_freetuptable(SPI_tuptable);
	return pl;
}

static int
MemberIndex(ProfileLinks *pl, CdpIdentifier *id)
{
	for (int i = 0; i < pl->nmembers; i++)
	{
		if (CdpIdentifierCompare(pl->members[i], id) == 0)
			return i;
		if ((i & 4095) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	return -1;
}

PG_FUNCTION_INFO_V1(cdp_explain_link);

/*
 * cdp.explain_link(a, b): the shortest chain of links that hold between a
 * and b (on a tie, the earliest evidence first); no rows when they are
 * apart.  Breadth-first over an adjacency built once from the pair table:
 * linear in the profile's identifiers and links, and cancellable.
 */
Datum
cdp_explain_link(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CdpIdentifier *a = PG_GETARG_IDENTIFIER_P(0);
	CdpIdentifier *b = PG_GETARG_IDENTIFIER_P(1);
	MemoryContext cxt;
	int64		pa,
				pb;
	ProfileLinks *pl;
	int			ia,
				ib,
				n;
	int		   *start,
			   *adj,
			   *via,
			   *queue;
	int			qhead = 0,
				qtail = 0;

	InitMaterializedSRF(fcinfo, 0);
	cxt = CurrentMemoryContext;
	SPI_connect();
	MemoryContextSwitchTo(cxt);
	pa = ProfileOf(a, true);
	pb = ProfileOf(b, true);
	if (pa != pb || CdpIdentifierCompare(a, b) == 0)
	{
		SPI_finish();
		return (Datum) 0;
	}
	pl = LoadProfileLinks(pa, true);
	n = pl->nmembers;
	ia = MemberIndex(pl, a);
	ib = MemberIndex(pl, b);
	if (ia < 0 || ib < 0)
	{
		SPI_finish();
		return (Datum) 0;
	}

	/* adjacency lists (both directions), each in evidence order */
	start = palloc0(sizeof(int) * (n + 1));
	adj = palloc(sizeof(int) * Max(2 * pl->nlinks, 1));
	for (int l = 0; l < pl->nlinks; l++)
	{
		start[pl->from[l] + 1]++;
		start[pl->to[l] + 1]++;
	}
	for (int i = 0; i < n; i++)
		start[i + 1] += start[i];
	{
		int		   *fill = palloc(sizeof(int) * Max(n, 1));

		memcpy(fill, start, sizeof(int) * n);
		for (int l = 0; l < pl->nlinks; l++)
		{
			adj[fill[pl->from[l]]++] = l;
			adj[fill[pl->to[l]]++] = l;
		}
	}

	/* breadth-first from a; via[m] is the link m was reached by */
	via = palloc(sizeof(int) * n);
	for (int i = 0; i < n; i++)
		via[i] = -2;
	queue = palloc(sizeof(int) * n);
	via[ia] = -1;
	queue[qtail++] = ia;
	while (qhead < qtail && via[ib] == -2)
	{
		int			cur = queue[qhead++];

		CHECK_FOR_INTERRUPTS();
		for (int e = start[cur]; e < start[cur + 1]; e++)
		{
			int			l = adj[e];
			int			next = pl->from[l] == cur ? pl->to[l] : pl->from[l];

			if (via[next] != -2)
				continue;
			via[next] = l;
			queue[qtail++] = next;
		}
	}

	if (via[ib] != -2)
	{
		int			len = 0;
		int		   *path = palloc(sizeof(int) * n);

		for (int m = ib; m != ia;)
		{
			int			l = via[m];

			path[len++] = m;
			m = pl->from[l] == m ? pl->to[l] : pl->from[l];
		}
		for (int step = 1; step <= len; step++)
		{
			int			to = path[len - step];
			int			l = via[to];
			int			from = pl->from[l] == to ? pl->to[l] : pl->from[l];
			Datum		values[5];
			bool		nulls[5] = {false, false, false, false, false};

			values[0] = Int32GetDatum(step);
			values[1] = PointerGetDatum(pl->members[from]);
			values[2] = PointerGetDatum(pl->members[to]);
			values[3] = CStringGetTextDatum(pl->message_id[l]);
			values[4] = TimestampTzGetDatum(pl->observed_at[l]);
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
	ProfileLinks *pl;
	CdpIdentifier **members;
	int			nmembers;
	int			iout;
	int		   *parent;
	int64	   *new_profile;
	int			root_keep;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	cxt = CurrentMemoryContext;
	SPI_connect();
	MemoryContextSwitchTo(cxt);
	idtype = CdpIdentifierTypeOid();

	/* the same lock every writer of the graph takes; every read comes after it */
	CdpLockIdentityGraph();
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

	pl = LoadProfileLinks(profile_id, false);
	nmembers = pl->nmembers;
	members = pl->members;
	iout = MemberIndex(pl, keep_out);
	if (iout < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("identifier \"%s\" is not in profile " INT64_FORMAT,
						CdpIdentifierToCString(keep_out), profile_id)));

	/* what the links that hold join once keep_out is taken out */
	parent = palloc(sizeof(int) * Max(nmembers, 1));
	for (int i = 0; i < nmembers; i++)
		parent[i] = i;
	for (int l = 0; l < pl->nlinks; l++)
	{
		if (pl->from[l] == iout || pl->to[l] == iout)
			continue;
		parent[Find(parent, pl->to[l])] = Find(parent, pl->from[l]);
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

	/* each part holds the traits and consent of the identifiers it kept */
	{
		int64	   *parts = palloc(sizeof(int64) * (nmembers + 1));

		parts[0] = profile_id;
		for (int i = 0; i < nmembers; i++)
			parts[i + 1] = new_profile[i];
		CdpRecomputeProfileState(parts, nmembers + 1);
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
