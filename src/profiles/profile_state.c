/*
 * profile_state.c
 *	  What people say about themselves in messages: traits (identify traits,
 *	  context.traits on any type) and consent (Segment categoryPreferences
 *	  and its "Segment Consent Preference Updated" event, RudderStack
 *	  consentManagement), gathered in memory per identifier and written
 *	  into the per-identifier stores and the profiles once per
 *	  process_inbox call (or when the gathered state grows over a bound).
 *
 *	  Both are kept per identifier (cdp.identifier_traits,
 *	  cdp.identifier_consent, the history in cdp.consent_log), which merges,
 *	  splits and rebuilds never rewrite, and derived into the profile record
 *	  (traits, trait_times, consent).  A message's state belongs to the
 *	  strongest identifier it linked (by identity rule priority: a userId
 *	  before an email before an anonymousId), so that a split moves it with
 *	  the identifier that is most surely that person, and a profile holds
 *	  the state of every identifier it holds.  Per key and per purpose the
 *	  value with the latest event time wins (ties broken by a total order,
 *	  see 75_profile_state.sql), so the order messages arrive in does not
 *	  matter and a profile built up a batch at a time equals one recomputed
 *	  from its identifiers.
 *
 *	  A chunk's messages go to a queue (profile_state_queue.c) that gathers
 *	  them per identifier, key and purpose, and is written into the stores
 *	  and profiles once per call.
 *
 *	  Locking: a call writes the state of identifiers whose profile rows it
 *	  holds (identity resolution locked them, for the rest of the
 *	  transaction), which is what cdp.set_consent takes too; profile rows
 *	  before state rows, everywhere.
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "identity.h"
#include "spi_util.h"

/* Trait keys one message sets at most; the rest are skipped (a violation). */
#define CDP_MAX_MESSAGE_TRAITS		100
/* A trait's key and value (as jsonb) at most; bigger ones are skipped. */
#define CDP_MAX_TRAIT_KEY_BYTES		128
#define CDP_MAX_TRAIT_VALUE_BYTES	2048
/* Consent categories one message states at most; the rest are skipped. */
#define CDP_MAX_MESSAGE_CONSENTS	64

#define CONSENT_EVENT "Segment Consent Preference Updated"

typedef enum StatePlan
{
	PLAN_VIOLATIONS,
	PLAN_STATEFUL_NEW,
	PLAN_RECOMPUTE,
	PLAN_PURPOSES,
	NUM_STATE_PLANS
} StatePlan;

static SPIPlanPtr plans[NUM_STATE_PLANS];
static Oid	plans_type_oid = InvalidOid;

/* the categories a message states, before purposes are known */
typedef struct MessageConsent
{
	int			n;
	int			named;			/* categories counted against the bound */
	char	   *names[CDP_MAX_MESSAGE_CONSENTS + 1];	/* lower case; NULL: full */
	bool		granted[CDP_MAX_MESSAGE_CONSENTS + 1];
} MessageConsent;

typedef struct Violation
{
	CdpIdentifier *id;
	const char *message_id;
	TimestampTz at;
	const char *rule;
	char	   *detail;
} Violation;

/* obj[key] when obj is an object (message fields may be any JSON type) */
static JsonbValue *
ObjectGet(JsonbValue *obj, const char *key)
{
	if (obj == NULL || obj->type != jbvObject)
		return NULL;
	return CdpJsonbObjectGet(obj, key);
}

/* the Segment event that states every category: a full statement */
static bool
IsConsentEvent(CdpMessage *msg)
{
	return msg->type != NULL && strcmp(msg->type, "track") == 0 &&
		msg->event != NULL && strcmp(msg->event, CONSENT_EVENT) == 0;
}

/*
 * Whether a message carries traits or consent (cheap: the hot path asks
 * for every message).  A group call's traits are the company's, never the
 * person's: only its context.traits count.
 */
bool
CdpMessageHasProfileState(CdpMessage *msg)
{
	JsonbValue *ctx = msg->context;

	if (msg->type != NULL && strcmp(msg->type, "identify") == 0 &&
		msg->traits != NULL && msg->traits->type == jbvObject && msg->traits->val.object.nPairs > 0)
		return true;
	if (IsConsentEvent(msg))
		return true;
	if (ctx == NULL || ctx->type != jbvObject)
		return false;
	return ObjectGet(ctx, "traits") != NULL || ObjectGet(ctx, "consent") != NULL ||
		ObjectGet(ctx, "consentManagement") != NULL;
}

/* whether an identify's own traits set key (they win over context.traits) */
static bool
HasKey(JsonbValue *obj, JsonbValue *key)
{
	char	   *k;

	if (obj == NULL || obj->type != jbvObject)
		return false;
	k = pnstrdup(key->val.string.val, key->val.string.len);
	return CdpJsonbObjectGet(obj, k) != NULL;
}

/* a violation of msg, recorded under the identifier its state goes to */
static Violation *
NewViolation(CdpMessage *msg, const char *rule, char *detail)
{
	Violation  *v = palloc(sizeof(Violation));

	v->id = msg->state_anchor;
	v->message_id = msg->message_id;
	v->at = msg->ts;
	v->rule = rule;
	v->detail = detail;
	return v;
}

/*
 * The trait rows of one message: identify traits first, then context.traits
 * for keys the former does not set.  At most CDP_MAX_MESSAGE_TRAITS keys,
 * keys of at most CDP_MAX_TRAIT_KEY_BYTES and values of at most
 * CDP_MAX_TRAIT_VALUE_BYTES (as jsonb); what is skipped becomes a violation
 * in *violations.
 */
static void
AddTraits(CdpStateQueue *queue, CdpMessage *msg, List **violations)
{
	JsonbValue *sources[2] = {NULL, NULL};
	int			carried = 0;
	int			taken = 0;
	char	   *too_large = NULL;
	int			ntoo_large = 0;
	CdpPendingId *owner = NULL;

	if (msg->type != NULL && strcmp(msg->type, "identify") == 0)
		sources[0] = msg->traits;
	sources[1] = ObjectGet(msg->context, "traits");
	for (int s = 0; s < 2; s++)
	{
		JsonbValue *obj = sources[s];

		if (obj == NULL || obj->type != jbvObject)
			continue;
		for (int i = 0; i < obj->val.object.nPairs; i++)
		{
			JsonbPair  *pair = &obj->val.object.pairs[i];
			Jsonb	   *value;

			if (s == 1 && HasKey(sources[0], &pair->key))
				continue;
			carried++;
			if (taken >= CDP_MAX_MESSAGE_TRAITS)
				continue;
			value = pair->key.val.string.len > CDP_MAX_TRAIT_KEY_BYTES ? NULL :
				JsonbValueToJsonb(&pair->value);
			if (value == NULL || VARSIZE(value) > CDP_MAX_TRAIT_VALUE_BYTES)
			{
				if (ntoo_large++ == 0)
					too_large = pnstrdup(pair->key.val.string.val,
										 Min(pair->key.val.string.len, 64));
				continue;
			}
			if (owner == NULL)
				owner = CdpPendingOwner(queue, msg->state_anchor, msg->profile_id);
			CdpPendTrait(queue, owner, pair->key.val.string.val,
						 pair->key.val.string.len, JsonbPGetDatum(value), msg->ts);
			taken++;
		}
	}
	if (carried > CDP_MAX_MESSAGE_TRAITS)
		*violations = lappend(*violations,
							  NewViolation(msg, "too_many_traits",
										   psprintf("the message sets %d traits; only the first %d are kept",
													carried, CDP_MAX_MESSAGE_TRAITS)));
	if (ntoo_large > 0)
		*violations = lappend(*violations,
							  NewViolation(msg, "trait_too_large",
										   psprintf("%d traits skipped, \"%s\" the first: keys are at most %d bytes, "
													"values at most %d bytes as jsonb",
													ntoo_large, too_large, CDP_MAX_TRAIT_KEY_BYTES,
													CDP_MAX_TRAIT_VALUE_BYTES)));
}

/*
 * One category a message states (name NULL: the message is a full
 * statement, every defined purpose it leaves out is denied), lower-cased.
 * A name longer than a purpose name can be names none and is dropped.
 * Returns false once the message is over its bound.
 */
static bool
AddConsent(MessageConsent *mc, const char *name, int len, bool granted)
{
	char	   *lower = NULL;

	if (name != NULL)
	{
		if (++mc->named > CDP_MAX_MESSAGE_CONSENTS)
			return false;
		if (len > 63)
			return true;
		lower = pnstrdup(name, len);
		for (int i = 0; i < len; i++)
			lower[i] = pg_ascii_tolower((unsigned char) lower[i]);
	}
	mc->names[mc->n] = lower;
	mc->granted[mc->n] = granted;
	mc->n++;
	return true;
}

/* the ids of a consentManagement list, each a decision */
static bool
AddConsentIds(MessageConsent *mc, JsonbValue *list, bool granted)
{
	if (list == NULL || list->type != jbvArray)
		return true;
	for (int i = 0; i < list->val.array.nElems; i++)
	{
		JsonbValue *e = &list->val.array.elems[i];

		if (e->type != jbvString)
			continue;
		if (!AddConsent(mc, e->val.string.val, e->val.string.len, granted))
			return false;
	}
	return true;
}

/*
 * The categories one message states, from every form it may carry them
 * in.  Returns false if it states more than CDP_MAX_MESSAGE_CONSENTS (the
 * first ones are kept).
 */
static bool
AddConsents(MessageConsent *mc, CdpMessage *msg)
{
	JsonbValue *prefs = ObjectGet(ObjectGet(msg->context, "consent"), "categoryPreferences");
	JsonbValue *rudder = ObjectGet(msg->context, "consentManagement");

	mc->n = 0;
	mc->named = 0;
	/* the full statement's mark does not count against the bound */
	if (IsConsentEvent(msg))
	{
		mc->names[mc->n] = NULL;
		mc->granted[mc->n++] = false;
	}
	if (prefs != NULL && prefs->type == jbvObject)
	{
		for (int i = 0; i < prefs->val.object.nPairs; i++)
		{
			JsonbPair  *pair = &prefs->val.object.pairs[i];

			if (pair->value.type != jbvBool)
				continue;
			if (!AddConsent(mc, pair->key.val.string.val, pair->key.val.string.len,
							pair->value.val.boolean))
				return false;
		}
	}
	if (!AddConsentIds(mc, ObjectGet(rudder, "allowedConsentIds"), true))
		return false;
	return AddConsentIds(mc, ObjectGet(rudder, "deniedConsentIds"), false);
}

/* the defined purposes, sorted (a message's categories name them) */
static char **
LoadPurposes(int *n)
{
	uint64		rows;
	char	  **names;

	rows = CdpExecPlan(CdpPlan(&plans[PLAN_PURPOSES],
							   "SELECT name FROM cdp.purposes ORDER BY name COLLATE \"C\"", 0, NULL),
					   NULL, NULL, SPI_OK_SELECT);
	names = palloc(sizeof(char *) * Max(rows, 1));
	for (uint64 r = 0; r < rows; r++)
		names[r] = SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1);
	SPI_freetuptable(SPI_tuptable);
	*n = (int) rows;
	return names;
}

/*
 * A message's decisions: one per defined purpose it states (a denial when
 * it states one both ways); a full statement also denies every defined
 * purpose it leaves out.  Categories that name no defined purpose are
 * dropped.
 */
static void
PendMessageConsent(CdpStateQueue *queue, CdpMessage *msg, MessageConsent *mc,
				   char **purposes, int npurposes)
{
	int			state[64 + 1];	/* per purpose: 0 unstated, 1 granted, 2 denied */
	int		   *st = npurposes <= 64 ? state : palloc(sizeof(int) * npurposes);
	bool		full = false;
	CdpPendingId *owner = CdpPendingOwner(queue, msg->state_anchor, msg->profile_id);

	memset(st, 0, sizeof(int) * npurposes);
	for (int i = 0; i < mc->n; i++)
	{
		if (mc->names[i] == NULL)
		{
			full = true;
			continue;
		}
		for (int p = 0; p < npurposes; p++)
			if (strcmp(mc->names[i], purposes[p]) == 0)
			{
				st[p] = (st[p] == 2 || !mc->granted[i]) ? 2 : 1;
				break;
			}
	}
	for (int p = 0; p < npurposes; p++)
	{
		if (st[p] == 0 && !full)
			continue;
		CdpPendDecision(queue, owner, purposes[p], st[p] == 1, msg->ts, msg->message_id,
						msg->source ? msg->source : "");
	}
}

/*
 * Messages over a bound, recorded with the identity violations (the
 * record of what a message asked for and did not get), in one statement.
 */
static void
WriteViolations(List *violations)
{
	int			n = list_length(violations);
	Datum	   *ids = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *mids = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *mid_nulls = palloc(sizeof(bool) * Max(n, 1));
	Datum	   *ats = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *rules = palloc(sizeof(Datum) * Max(n, 1));
	Datum	   *details = palloc(sizeof(Datum) * Max(n, 1));
	Oid			argtypes[5] = {get_array_type(plans_type_oid), TEXTARRAYOID, TIMESTAMPTZARRAYOID,
	TEXTARRAYOID, TEXTARRAYOID};
	Datum		args[5];
	int			dims[1] = {n};
	int			lbs[1] = {1};
	int			k = 0;
	ListCell   *lc;

	if (n == 0)
		return;
	foreach(lc, violations)
	{
		Violation  *v = lfirst(lc);

		ids[k] = PointerGetDatum(v->id);
		mid_nulls[k] = (v->message_id == NULL);
		mids[k] = v->message_id ? CStringGetTextDatum(v->message_id) : (Datum) 0;
		ats[k] = TimestampTzGetDatum(v->at);
		rules[k] = CStringGetTextDatum(v->rule);
		details[k] = CStringGetTextDatum(v->detail);
		k++;
	}
	args[0] = CdpArray(ids, n, plans_type_oid);
	args[1] = PointerGetDatum(construct_md_array(mids, mid_nulls, 1, dims, lbs, TEXTOID, -1, false,
												 TYPALIGN_INT));
	args[2] = CdpArray(ats, n, TIMESTAMPTZOID);
	args[3] = CdpArray(rules, n, TEXTOID);
	args[4] = CdpArray(details, n, TEXTOID);
	CdpExecPlan(CdpPlanReplanned(&plans[PLAN_VIOLATIONS],
								 "INSERT INTO cdp.identity_violations (identifier, message_id, at, rule, detail) "
								 "SELECT * FROM ROWS FROM (unnest($1), unnest($2), unnest($3), unnest($4), "
								 "unnest($5))",
								 5, argtypes),
				args, NULL, SPI_OK_INSERT);
}

/*
 * After identity resolution: the traits and consent of a chunk's messages
 * that resolved to a profile, gathered in queue per identifier (no
 * statement: CdpWriteQueuedProfileState writes them); messages over a
 * bound are recorded at once, in one statement.
 */
void
CdpStoreProfileState(CdpMessage **msgs, int n, CdpStateQueue *queue)
{
	List	   *violations = NIL;
	char	  **purposes = NULL;
	int			npurposes = 0;
	MessageConsent mc;

	for (int i = 0; i < n; i++)
	{
		CdpMessage *msg = msgs[i];

		if (msg->outcome != CDP_PENDING || !msg->has_profile_id || msg->state_anchor == NULL)
			continue;
		AddTraits(queue, msg, &violations);
		if (!AddConsents(&mc, msg))
			violations = lappend(violations,
								 NewViolation(msg, "too_many_consent_categories",
											  psprintf("the message states more than %d consent categories; "
													   "only the first %d are kept",
													   CDP_MAX_MESSAGE_CONSENTS, CDP_MAX_MESSAGE_CONSENTS)));
		if (mc.n == 0)
			continue;
		if (purposes == NULL)
		{
			CdpCheckTypePlans(plans, NUM_STATE_PLANS, &plans_type_oid, CdpIdentifierTypeOid());
			purposes = LoadPurposes(&npurposes);
		}
		PendMessageConsent(queue, msg, &mc, purposes, npurposes);
	}
	if (violations != NIL)
	{
		int			level;

		CdpCheckTypePlans(plans, NUM_STATE_PLANS, &plans_type_oid, CdpIdentifierTypeOid());
		level = CdpBeginIndexedPlans();
		WriteViolations(violations);
		CdpEndIndexedPlans(level);
	}
}

/*
 * Derive the traits and consent of these profiles (and of those they were
 * merged into) from their identifiers' stores; the caller holds their rows.
 * Merges, splits and rebuilds call it; so may forget.
 */
void
CdpRecomputeProfileState(int64 *profile_ids, int n)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1];
	int			level;

	if (n == 0)
		return;
	CdpCheckTypePlans(plans, NUM_STATE_PLANS, &plans_type_oid, CdpIdentifierTypeOid());
	level = CdpBeginIndexedPlans();
	args[0] = CdpInt8Array(profile_ids, n);
	CdpExecPlan(CdpPlan(&plans[PLAN_RECOMPUTE], "SELECT cdp.recompute_profile_state($1)",
						1, argtypes),
				args, NULL, SPI_OK_SELECT);
	CdpEndIndexedPlans(level);
}

/*
 * Whether a table of pg_cdp's has never held a row: it has no block (rows
 * deleted leave their blocks until a vacuum truncates them, rows being
 * inserted have theirs already).  Cheaper than a query that would find
 * nothing, where no one has recorded traits or consent yet.
 */
static bool
NeverHeldRows(const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("cdp", false));
	Relation	rel;
	bool		never;

	if (!OidIsValid(relid))
		return false;
	rel = table_open(relid, AccessShareLock);
	never = rel->rd_rel->relkind == RELKIND_RELATION && RelationGetNumberOfBlocks(rel) == 0;
	table_close(rel, AccessShareLock);
	return never;
}

/*
 * Identifiers that just joined profiles: those that already hold state
 * (set_consent before any message, or a message before a rebuild or split
 * took them out) bring it to their profile.  One probe for the batch (none
 * while no identifier has ever held state); a recompute only when some do.
 */
void
CdpProfileStateOfNewIdentities(CdpIdentifier **ids, int64 *profiles, int n)
{
	Oid			argtypes[2];
	Datum		args[2];
	uint64		rows;
	int64	   *found;
	int			level;

	if (n == 0 || (NeverHeldRows("identifier_traits") && NeverHeldRows("identifier_consent")))
		return;
	CdpCheckTypePlans(plans, NUM_STATE_PLANS, &plans_type_oid, CdpIdentifierTypeOid());
	argtypes[0] = get_array_type(plans_type_oid);
	argtypes[1] = INT8ARRAYOID;
	args[0] = CdpArray((Datum *) ids, n, plans_type_oid);
	args[1] = CdpInt8Array(profiles, n);
	/*
	 * Probes of the two primary keys, never a hashed subplan: that reads
	 * every identifier with state, each batch, as the tables grow.
	 */
	level = CdpBeginIndexedPlans();
	rows = CdpExecPlan(CdpPlanReplanned(&plans[PLAN_STATEFUL_NEW],
										"SELECT DISTINCT u.p FROM ROWS FROM (unnest($1), unnest($2)) AS u(i, p) "
										"JOIN (SELECT t.identifier FROM cdp.identifier_traits t "
										"      WHERE t.identifier = ANY ($1) "
										"      UNION SELECT c.identifier FROM cdp.identifier_consent c "
										"      WHERE c.identifier = ANY ($1)) s ON s.identifier = u.i",
										2, argtypes),
					   args, NULL, SPI_OK_SELECT);
	CdpEndIndexedPlans(level);
	if (rows == 0)
		return;
	found = palloc(sizeof(int64) * rows);
	for (uint64 r = 0; r < rows; r++)
	{
		bool		isnull;

		found[r] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1,
											   &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	CdpRecomputeProfileState(found, (int) rows);
}
