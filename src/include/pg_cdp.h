/*
 * pg_cdp.h
 *	  Declarations shared by pg_cdp's C files: settings, the message being
 *	  ingested, and the entry points each file offers the others.
 */
#ifndef PG_CDP_H
#define PG_CDP_H

#include "postgres.h"

#include "common/jsonapi.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

/* settings (src/common/pg_cdp.c) */
extern int	cdp_dedup_window_secs;
extern int	cdp_max_future_skew_secs;
extern int	cdp_max_event_bytes;
extern int	cdp_max_request_bytes;
extern int	cdp_batch_size;
extern bool cdp_worker_async_commit;
/* the current transaction is an ingest worker's batch committing asynchronously */
extern bool cdp_batch_commits_async;
extern int	cdp_max_merges_per_profile;
extern int	cdp_max_event_age_mins;
extern int	cdp_max_partitions;
extern int	cdp_retention_lock_wait_ms;
extern int	cdp_max_inbox_depth;

/*
 * Advisory lock keys, in pg_cdp's own class so they never collide with an
 * application's: one serialises partition DDL, one serialises maintenance.
 */
#define CDP_LOCK_CLASS			0x43445001	/* "CDP" 01 */
#define CDP_LOCK_PARTITION_DDL	1
#define CDP_LOCK_MAINTENANCE	2
/* 3 is the identity lock (identity.h); 4 orders ingest against cdp.forget */
#define CDP_LOCK_SUPPRESSION	4

/*
 * Earliest event time accepted: 0001-01-08 00:00 UTC, so that every
 * partition range (weeks included) starts in the common era.
 */
#define CDP_MIN_EVENT_TS	(INT64CONST(-63082281600000000) + 7 * USECS_PER_DAY)

/*
 * What a dead letter keeps of a payload over cdp.max_request_bytes, which is
 * never read whole: its first 4 kB.
 */
#define CDP_TOO_LARGE_PREFIX_BYTES 4096

/* cdp.max_event_age's default: 20 years of 365.25 days, in minutes */
#define CDP_DEFAULT_MAX_EVENT_AGE_MINS	(7305 * 24 * 60)

/* limits from the Segment spec */
#define CDP_MAX_MESSAGE_ID_CHARS 100

typedef enum CdpOutcome
{
	CDP_PENDING = 0,
	CDP_STORED,
	CDP_DUPLICATE,
	CDP_DEAD,
	CDP_SKIPPED,				/* a BEFORE ROW trigger on cdp.events dropped it */
	CDP_SUPPRESSED				/* carries an identifier cdp.forget suppressed */
} CdpOutcome;

/*
 * One message on its way from the inbox to cdp.events: where it came from,
 * its validated fields, and what became of it.
 */
typedef struct CdpMessage
{
	/* origin */
	int64		inbox_id;
	const char *source;
	TimestampTz received_at;
	const char *raw;			/* text as received, or NULL: serialise item */
	JsonbValue *item;			/* parsed object (envelope already merged) */

	/* validated fields (NULL when absent) */
	const char *type;
	const char *message_id;
	bool		message_id_generated;
	const char *event;
	const char *name;
	const char *user_id;
	const char *anonymous_id;
	const char *group_id;
	const char *previous_id;
	TimestampTz ts;
	bool		has_original_ts;
	TimestampTz original_ts;
	bool		has_sent_at;
	TimestampTz sent_at;
	JsonbValue *properties;
	Jsonb	   *properties_jsonb;	/* properties as stored, once made (CdpPropertiesJsonb) */
	JsonbValue *traits;
	JsonbValue *context;
	JsonbValue *extra;
	bool		has_profile_id;
	int64		profile_id;
	struct CdpIdentifier *state_anchor; /* traits and consent go to it */
	Oid			partition;		/* the cdp.events partition it goes to */

	/* outcome */
	CdpOutcome	outcome;
	const char *error_code;
	char	   *error_message;
} CdpMessage;

/* a stretch of payload text: offset and length in bytes */
typedef struct CdpJsonSpan
{
	int			start;			/* -1: absent */
	int			len;
} CdpJsonSpan;

/* what a scan of a payload found (envelope.c) */
typedef struct CdpEnvelopeScan
{
	JsonTokenType root;			/* first token of the text */
	bool		has_batch;
	JsonTokenType batch_type;	/* first token of "batch"'s value */
	int			nitems;			/* elements of "batch", when an array */
	CdpJsonSpan *items;
	CdpJsonSpan context;
	CdpJsonSpan integrations;
	CdpJsonSpan sent_at;
} CdpEnvelopeScan;

/*
 * One inbox row being processed, and what its payload holds: one message,
 * the items of a batch envelope (found by a scan, parsed one chunk at a
 * time), or nothing storable (error_code set: the row is one dead letter).
 */
typedef struct CdpInboxRow
{
	int64		id;
	char	   *payload;		/* the text, only its first bytes if too large */
	int			len;			/* strlen(payload) */
	int64		size;			/* the payload's length in the inbox */
	const char *source;
	TimestampTz received_at;

	const char *error_code;		/* the whole row is dead: why */
	char	   *error_message;
	int			nitems;			/* -1: one message; else envelope items */
	CdpJsonSpan *items;
	JsonbValue *context;		/* the envelope's, parsed; NULL if absent */
	JsonbValue *integrations;
	JsonbValue *sent_at;
	int			shared_len;		/* their text length, added to every item */
} CdpInboxRow;

/* json_fast_parse.c */
extern bool CdpParseJsonFast(const char *text, int len, JsonbValue **result);

/* json_parse.c */
extern JsonbValue *CdpParseJsonValue(const char *text, int len,
									 const char **error_code, char **error_message);
extern JsonbValue *CdpParseJson(const char *text, int len,
								const char **error_code, char **error_message);
extern JsonbValue *CdpJsonbObjectGet(JsonbValue *obj, const char *key);
extern JsonbValue *CdpJsonbObjectMergeMissing(JsonbValue *obj, JsonbValue *defaults);
extern JsonbValue *CdpJsonbObjectWith(JsonbValue *obj, const char *key, JsonbValue *val);
extern JsonbValue *CdpJsonbObjectWithout(JsonbValue *obj, const char *key);
extern char *CdpJsonbValueToText(JsonbValue *val);
extern const char *CdpJsonTypeName(JsonbValue *val);

/* envelope.c */
extern bool CdpScanEnvelope(const char *text, int len, CdpEnvelopeScan *scan,
							const char **error_code, char **error_message);
extern const char *CdpRedactWriteKeys(const char *text);
extern char *CdpTextPrefix(const char *text, int len, int max_bytes);

/* iso8601.c */
extern bool CdpParseIsoTimestamp(const char *s, int len, TimestampTz *result);

/* inbox_take.c */
extern CdpInboxRow *CdpTakeInboxRows(int want, int64 after_id, int64 last_id, int64 budget,
									  int *nrows);

/* message.c */
extern bool CdpPrepareRow(CdpInboxRow *row);
extern void CdpScanRow(CdpInboxRow *row);
extern int	CdpRowMessages(const CdpInboxRow *row);
extern int64 CdpMessageCost(const CdpInboxRow *row, int item);
extern CdpMessage *CdpRowMessage(const CdpInboxRow *row, int item);
extern CdpMessage *CdpFailedMessage(const CdpInboxRow *row, int item,
									const char *code, const char *reason);
extern void CdpValidateMessage(CdpMessage *msg, TimestampTz retention_horizon);
extern void CdpMarkDead(CdpMessage *msg, const char *code, const char *fmt,...) pg_attribute_printf(3, 4);
extern const char *CdpMessagePayload(CdpMessage *msg);

/* sources.c */
extern void CdpCheckSourceForEnqueue(const char *name);
extern const char *CdpSourceRefusal(const char *source, char **message);
extern bool CdpRefuseRowSource(CdpInboxRow *row);
extern const char *CdpSourceOfWriteKey(const char *write_key);

/* process.c */
typedef void (*CdpSubxactWork) (void *arg);
extern ErrorData *CdpRunInSubtransaction(CdpSubxactWork work, void *arg,
										 bool (*catchable) (ErrorData *));

/* one batch a drain takes (see CdpDrainBatch) */
typedef struct CdpDrainRequest
{
	int			want;			/* rows at most */
	int64		after_id;		/* take rows above this id */
	int64		last_id;		/* and up to this one (0: no bound) */
	const char *quarantine;		/* dead-letter the rows with this reason */
	bool		strict;			/* blame a message for any error it raises */
	int64	   *first_id;		/* told the first row's id once taken */
} CdpDrainRequest;

typedef struct CdpDrainResult
{
	int			rows;			/* inbox rows taken */
	int64		messages;		/* messages they held */
	int64		last_id;		/* the last row's id, if any */
} CdpDrainResult;

typedef struct CdpDrain CdpDrain;
extern bool CdpIsPassingError(int sqlerrcode);
extern CdpDrain *CdpBeginDrain(void);
extern bool CdpDrainBatch(CdpDrain *d, const CdpDrainRequest *req, CdpDrainResult *result);
extern void CdpEndDrain(CdpDrain *d);

/* dedup.c */
extern void CdpDeduplicate(CdpMessage **msgs, int n);
extern int64 CdpPurgeDedupWindow(void);
extern void CdpForgetMessageIds(CdpMessage **msgs, int n);

/* suppression.c */
struct CdpIdentifier;
extern void CdpDropSuppressed(CdpMessage **msgs, int n);
extern void CdpLockSuppressions(bool exclusive);
extern void CdpCheckNotSuppressed(struct CdpIdentifier *id);
extern void CdpSuppressionCacheCallback(Datum arg, Oid relid);

/* dead_letter.c */
extern int	CdpWriteDeadLetters(CdpMessage **msgs, int n);

/* partitions.c */
typedef struct CdpPartitionConfig
{
	Interval	part_interval;
	int			premake;
	bool		has_retention;
	Interval	retention;
	char		retention_mode[8];
	bool		has_archive;	/* archive_interval is longer than part_interval */
	Interval	archive_interval;
	Interval	archive_after;

	/* derived when loaded, from the transaction's start */
	TimestampTz archive_before; /* ranges ending by then span archive_interval */
	TimestampTz oldest_accepted;	/* now - cdp.max_event_age */
} CdpPartitionConfig;

extern void CdpLoadPartitionConfig(CdpPartitionConfig *config);
extern Oid	CdpEventsRelid(void);
extern int	CdpRouteEvents(CdpMessage **msgs, int n, const CdpPartitionConfig *config);
extern int	CdpCreatePartitionsThrough(TimestampTz from, TimestampTz upto,
									   const CdpPartitionConfig *config);
extern List *CdpPartitionsEndingBefore(TimestampTz horizon, bool with_pending);
extern int	CdpPartitionCount(void);
extern TimestampTz CdpRetentionHorizon(const CdpPartitionConfig *config, TimestampTz now);

/* maintenance.c */
extern bool CdpUpkeepWithoutRetention(CdpPartitionConfig *config, int64 *purged, int *created);

/* event_store.c */
extern Jsonb *CdpPropertiesJsonb(CdpMessage *msg);
extern void CdpCheckEventConstraints(CdpMessage **msgs, int n);
extern int	CdpStoreEvents(CdpMessage **msgs, int n);
extern void CdpEventStoreCacheCallback(Datum arg, Oid relid);

/* ingest.c */
extern int64 CdpCountMessages(Jsonb *payload);
extern void CdpEnqueuePayload(const char *payload, int len, const char *source,
							  TimestampTz received_at);

#endif							/* PG_CDP_H */
