/*
 * stats.h
 *	  Shared-memory statistics (cdp.stats, cdp.worker_stats) and the inbox
 *	  depth behind cdp.max_inbox_depth: what the pipeline and the ingest
 *	  workers report, counted when the transaction that did the work commits.
 */
#ifndef CDP_STATS_H
#define CDP_STATS_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/relcache.h"

#include "workers.h"			/* CDP_MAX_INGEST_WORKERS */

/* the counters, per database */
typedef enum CdpStat
{
	CDP_STAT_ENQUEUED = 0,		/* inbox rows queued */
	CDP_STAT_RECEIVED,			/* messages taken from the inbox */
	CDP_STAT_STORED,
	CDP_STAT_DEDUPLICATED,
	CDP_STAT_DEAD_LETTERED,
	CDP_STAT_SUPPRESSED,
	CDP_STAT_DROPPED,			/* a BEFORE ROW trigger on cdp.events dropped it */
	CDP_STAT_MERGES,			/* identity merges */
	CDP_STAT_COUNT
} CdpStat;

struct CdpMessage;

/* _PG_init: shared memory and transaction callbacks, when preloading */
extern void CdpStatsInit(void);

/* the pipeline (any backend or worker running it) */
extern void CdpStatsAdd(CdpStat stat, int64 n);
extern void CdpStatsCountOutcomes(struct CdpMessage **msgs, int n);
extern void CdpStatsTakingFromInbox(void);
extern void CdpStatsInboxTaken(int64 rows);

/* the AFTER INSERT statement trigger on cdp.inbox: bound and count queued rows */
extern void CdpStatsInboxRowsQueued(Relation inbox, int64 rows, CommandId cid);

/* the ingest workers */
extern void CdpStatsWorkerStarted(int worker_slot, int pid);
extern void CdpStatsWorkerStopped(int worker_slot);
extern void CdpStatsReportIdentities(int worker_slot, uint64 recalled, uint64 read);
extern void CdpStatsReportBatch(int worker_slot, int64 messages,
								TimestampTz started, TimestampTz ended);

#endif							/* CDP_STATS_H */
