/*
 * sources.c
 *	  Which source a message may be attributed to.  A source is a row of
 *	  cdp.source_keys ('sql' and 'copy' are made at install); the name on an
 *	  inbox row is free text that anyone with INSERT on cdp.inbox can set, so
 *	  it is checked twice: cdp.ingest refuses an unknown or disabled source,
 *	  and processing turns a queued row from one into a dead letter
 *	  (unknown_source, source_disabled) without parsing it.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "pg_cdp.h"
#include "spi_util.h"

/* the longest name cdp.source_keys accepts (its CHECK) */
#define CDP_SOURCE_NAME_MAX 63

typedef enum SourceState
{
	SOURCE_UNKNOWN,
	SOURCE_DISABLED,
	SOURCE_ENABLED
} SourceState;

typedef struct SourceEntry
{
	char		name[CDP_SOURCE_NAME_MAX + 1];
	SourceState state;
} SourceEntry;

static SPIPlanPtr lookup_plan = NULL;

/* answers for the current batch; dropped with the batch's memory */
static HTAB *source_cache = NULL;
static MemoryContextCallback cache_reset;

static void
ForgetCache(void *arg)
{
	source_cache = NULL;
}

/* a name as shown in a message: at most 63 bytes of it, whole characters */
static char *
ShownName(const char *name)
{
	int			len = strlen(name);

	if (len <= CDP_SOURCE_NAME_MAX)
		return pstrdup(name);
	return psprintf("%s...", pnstrdup(name, pg_mbcliplen(name, len, CDP_SOURCE_NAME_MAX)));
}

static SourceState
ReadSourceState(const char *name)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(name);
	bool		isnull;
	SourceState state = SOURCE_UNKNOWN;

	if (CdpExecPlan(CdpPlan(&lookup_plan,
							"SELECT disabled_at IS NULL FROM cdp.source_keys WHERE name = $1",
							1, &argtype),
					&arg, NULL, SPI_OK_SELECT) > 0)
		state = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										   1, &isnull)) ? SOURCE_ENABLED : SOURCE_DISABLED;
	SPI_freetuptable(SPI_tuptable);
	return state;
}

/*
 * What a source name stands for, asked once per batch and name.  A name
 * longer than any source can have is unknown without asking (and is not
 * kept: a writer could send many).
 */
static SourceState
LookupSource(const char *name)
{
	SourceEntry *entry;
	bool		found;

	if (strlen(name) > CDP_SOURCE_NAME_MAX)
		return SOURCE_UNKNOWN;
	if (source_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = CDP_SOURCE_NAME_MAX + 1;
		ctl.entrysize = sizeof(SourceEntry);
		ctl.hcxt = CurrentMemoryContext;
		source_cache = hash_create("cdp sources", 16, &ctl,
								   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		cache_reset.func = ForgetCache;
		cache_reset.arg = NULL;
		MemoryContextRegisterResetCallback(CurrentMemoryContext, &cache_reset);
	}
	entry = hash_search(source_cache, name, HASH_ENTER, &found);
	if (!found)
		entry->state = ReadSourceState(name);
	return entry->state;
}

/*
 * cdp.ingest's check: an unknown source is 42704, a disabled one 55000.
 * The caller is connected to SPI.
 */
void
CdpCheckSourceForEnqueue(const char *name)
{
	SourceState state = strlen(name) > CDP_SOURCE_NAME_MAX ? SOURCE_UNKNOWN : ReadSourceState(name);

	if (state == SOURCE_UNKNOWN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("source \"%s\" does not exist", ShownName(name)),
				 errhint("Register it with cdp.create_source(); cdp.sources lists the sources.")));
	if (state == SOURCE_DISABLED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("source \"%s\" is disabled", name)));
}

/*
 * Why a queued row from this source may not be processed: the dead-letter
 * code (unknown_source, source_disabled) with *message set, or NULL when the
 * source is registered and enabled.
 */
const char *
CdpSourceRefusal(const char *source, char **message)
{
	switch (LookupSource(source))
	{
		case SOURCE_ENABLED:
			return NULL;
		case SOURCE_DISABLED:
			*message = psprintf("source \"%s\" is disabled", source);
			return "source_disabled";
		default:
			*message = psprintf("source \"%s\" is not registered", ShownName(source));
			return "unknown_source";
	}
}

/*
 * Refuse an inbox row whose source is unknown or disabled: the whole row
 * becomes one dead letter with its payload as queued, unparsed (a payload
 * nobody may send is not worth parsing), and a replay brings it back as it
 * came.  A row too large to read whole is left to be refused as too_large,
 * so no dead letter says "replay me" over a payload it kept only in part.
 */
bool
CdpRefuseRowSource(CdpInboxRow *row)
{
	char	   *message;
	const char *code;

	if (row->size > cdp_max_request_bytes)
		return false;
	code = CdpSourceRefusal(row->source, &message);
	if (code == NULL)
		return false;
	row->nitems = -1;
	row->error_code = code;
	row->error_message = message;
	return true;
}

/* a write key's source, as known in the current transaction */
typedef struct KeyEntry
{
	char		key[NAMEDATALEN * 2];
	char		source[CDP_SOURCE_NAME_MAX + 1];
	bool		known;
} KeyEntry;

/*
 * The enabled source a write key authenticates, or NULL: what the HTTP
 * endpoint asks of every request.  Answers are kept for the caller's
 * transaction only, so a key rotated or a source disabled stops working
 * at the next transaction; a lookup that raised an error (a lock timeout,
 * a cancel) keeps nothing, so the next request with that key asks again
 * rather than being refused as unknown.  The caller is connected to SPI.
 */
const char *
CdpSourceOfWriteKey(const char *write_key)
{
	static SPIPlanPtr plan = NULL;
	static HTAB *keys = NULL;
	static LocalTransactionId keys_xact = InvalidLocalTransactionId;
	KeyEntry   *entry;
	bool		found;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];

	/* real keys are 68 characters; anything much longer is not one */
	if (strlen(write_key) >= NAMEDATALEN * 2)
		return NULL;
	if (keys == NULL || keys_xact != MyProc->lxid)
	{
		HASHCTL		ctl;

		if (keys != NULL)
			hash_destroy(keys);
		ctl.keysize = NAMEDATALEN * 2;
		ctl.entrysize = sizeof(KeyEntry);
		ctl.hcxt = TopMemoryContext;
		keys = hash_create("cdp write keys", 16, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		keys_xact = MyProc->lxid;
	}
	entry = hash_search(keys, write_key, HASH_FIND, &found);
	if (!found)
	{
		/* kept only once answered: a lookup that failed must not leave "unknown" behind */
		bool		known = false;
		char		source[CDP_SOURCE_NAME_MAX + 1];

		args[0] = CStringGetTextDatum(write_key);
		if (CdpExecPlan(CdpPlan(&plan, "SELECT name FROM cdp.source_keys"
										" WHERE key_hash = sha256(convert_to($1, 'UTF8'))"
										" AND disabled_at IS NULL", 1, argtypes),
						args, NULL, SPI_OK_SELECT) == 1)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
			{
				strlcpy(source, TextDatumGetCString(d), sizeof(source));
				known = true;
			}
		}
		entry = hash_search(keys, write_key, HASH_ENTER, &found);
		entry->known = known;
		if (known)
			strlcpy(entry->source, source, sizeof(entry->source));
	}
	return entry->known ? entry->source : NULL;
}
