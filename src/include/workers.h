/*
 * workers.h
 *	  The background worker pool: a launcher and the ingest workers it
 *	  starts, sharing a small area of shared memory.
 */
#ifndef CDP_WORKERS_H
#define CDP_WORKERS_H

#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"

/* most ingest workers cdp.ingest_workers may ask for */
#define CDP_MAX_INGEST_WORKERS 32

/* why an ingest worker last stopped, as the launcher reads it */
typedef enum CdpWorkerExit
{
	CDP_EXIT_NONE = 0,			/* running, or died without saying */
	CDP_EXIT_NO_EXTENSION,		/* pg_cdp is not installed in the database */
	CDP_EXIT_CITUS_WORKER,		/* this node is a Citus worker: nothing to serve */
	CDP_EXIT_TOLD				/* the launcher or a database command asked it */
} CdpWorkerExit;

typedef struct CdpWorkerSlot
{
	pid_t		pid;			/* 0 when no worker holds the slot */
	Latch	   *latch;			/* set to wake it */
	pg_atomic_uint32 idle;		/* waiting for work */
	CdpWorkerExit exit_reason;
	Oid			held_database;	/* inbox rows its batch holds (InvalidOid: none) */
	int64		held_first;
	int64		held_last;
} CdpWorkerSlot;

typedef struct CdpWorkerPool
{
	slock_t		mutex;			/* protects every field but the atomics */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	Oid			database;		/* the workers' database, once started */
	pid_t		paused_by;		/* a backend running DROP DATABASE and the like */
	Oid			paused_database;
	pg_atomic_uint64 extension_changes; /* CREATE/DROP EXTENSION pg_cdp seen */
	pg_atomic_uint32 next_wake; /* round robin over the idle workers */
	pg_atomic_uint64 identity_epoch;	/* bumped by writers moving identities */
	pg_atomic_uint64 evidence_epoch;	/* bumped by writers removing pairs or links */
	pg_atomic_uint32 identity_cache_off;	/* see identity_recent.c */
	CdpWorkerSlot slots[CDP_MAX_INGEST_WORKERS];
	CdpWorkerSlot maintenance;	/* the maintenance worker (its idle is unused) */
	CdpWorkerSlot http;			/* the HTTP endpoint's worker (idle unused) */
} CdpWorkerPool;

extern CdpWorkerPool *CdpPool;

/* GUCs (pg_cdp.c) */
extern char *cdp_database_name;
extern int	cdp_ingest_workers;
extern int	cdp_identity_cache_size;
extern int	cdp_maintenance_interval_secs;
extern int	cdp_http_port;
extern char *cdp_http_listen_address;
extern int	cdp_http_max_connections;
extern int	cdp_http_idle_timeout_secs;
extern int	cdp_http_request_timeout_secs;
extern int	cdp_http_max_inflate_ratio;

/* worker_pool.c */
extern void CdpWorkersInit(void);
extern void CdpWakeWorkerAtCommit(void);
extern void CdpWakeIdleWorker(int except_slot);
extern void CdpNoteExtensionChangeAtCommit(void);
extern void CdpWakeLauncher(void);
extern bool CdpWaitForWorkersGone(long timeout_ms);
extern void CdpClaimWorkerSlot(CdpWorkerSlot *slot);
extern void CdpExitWorker(CdpWorkerSlot *slot, CdpWorkerExit reason) pg_attribute_noreturn();
extern Oid	CdpExtensionOwner(void);
extern void CdpStandDownOnCitusWorker(CdpWorkerSlot *slot);
extern void CdpHoldInboxRowsFor(CdpWorkerSlot *slot);
extern void CdpNoteInboxRowsHeld(int64 first, int64 last);
extern int	CdpInboxRowsHeldByOthers(int64 *first, int64 *last);

/* worker_guard.c */
extern void CdpInstallWorkerGuard(void);

/* launcher.c, ingest_worker.c: background worker entry points */
extern PGDLLEXPORT void cdp_launcher_main(Datum arg);
extern PGDLLEXPORT void cdp_ingest_worker_main(Datum arg);
extern PGDLLEXPORT void cdp_maintenance_worker_main(Datum arg);
extern PGDLLEXPORT void cdp_http_worker_main(Datum arg);
extern void CdpStartLauncher(void);

#endif							/* CDP_WORKERS_H */
