/*
 * http_commit.c
 *	  The HTTP endpoint's group commit: every request whose body has arrived
 *	  since the last round is judged, authenticated and queued in one
 *	  transaction, each in its own subtransaction so that one refused (full
 *	  inbox, bad key) does not sink the others, and all are answered 200 only
 *	  once that transaction has committed, durably.  While one round
 *	  commits, the next round's requests gather, so concurrent clients share
 *	  a WAL flush instead of paying one each.
 *
 *	  Reads (the profile API) run the same way in a read-only transaction
 *	  of their own, before the round of writes: they wait for no flush.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "pg_cdp.h"
#include "http_server.h"
#include "workers.h"

/* cdp.* settings as a request's bounds */
static void
CurrentLimits(CdpHttpLimits *limits)
{
	limits->max_request_bytes = cdp_max_request_bytes;
	limits->max_event_bytes = cdp_max_event_bytes;
	limits->max_inflate_ratio = cdp_http_max_inflate_ratio;
}

/* judge, authenticate and queue one ingest request (in a subtransaction) */
static void
QueueRequest(void *arg)
{
	CdpHttpHeld *req = arg;
	CdpHttpLimits limits;
	CdpHttpIngest in;
	const char *source;

	CurrentLimits(&limits);
	CdpHttpIngestRequest(req->route, req->authorization, req->content_encoding,
						 req->body ? req->body : "", req->len, &limits, &in);
	if (in.status != 0)
	{
		CdpHttpAnswer(req, in.status, in.error, in.message);
		return;
	}
	source = CdpHttpKeyIsPrintable(in.write_key) ? CdpSourceOfWriteKey(in.write_key) : NULL;
	if (source == NULL)
	{
		CdpHttpAnswer(req, 401, "unauthorized", "unknown or disabled write key");
		return;
	}
	if (in.messages > 0)
		CdpEnqueuePayload(in.payload, in.payload_len, source, req->started);
	req->events = in.messages;
	req->await_commit = true;
}

static bool
CatchAll(ErrorData *edata)
{
	return true;
}

/* the answer to a request whose queueing raised edata */
static void
AnswerError(CdpHttpHeld *req, ErrorData *edata)
{
	if (edata->sqlerrcode == ERRCODE_CONFIGURATION_LIMIT_EXCEEDED)
	{
		req->retry_after = 1;
		CdpHttpAnswer(req, 429, "inbox_full", edata->message);
		return;
	}
	ereport(LOG,
			(errmsg("pg_cdp http: a request to %s failed: %s",
					CdpHttpRouteLabel(req->route), edata->message)));
	/* what a retry can cure: a busy or restarting server, one that is read-only for now */
	if (CdpIsPassingError(edata->sqlerrcode) ||
		edata->sqlerrcode == ERRCODE_READ_ONLY_SQL_TRANSACTION)
	{
		req->retry_after = 1;
		CdpHttpAnswer(req, 503, "unavailable", edata->message);
	}
	else if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_DATA_EXCEPTION ||
			 ERRCODE_TO_CATEGORY(edata->sqlerrcode) == ERRCODE_PROGRAM_LIMIT_EXCEEDED)
		CdpHttpAnswer(req, 400, "invalid", edata->message);
	else
		CdpHttpAnswer(req, 500, "internal", edata->message);
}

/* GET /health: whether a write could commit now */
static void
AnswerHealth(CdpHttpHeld *req)
{
	if (RecoveryInProgress())
		CdpHttpAnswerText(req, 503, pstrdup("{\"status\":\"unavailable\",\"reason\":\"the server is in recovery\"}"), false);
	else if (XactReadOnly)
		CdpHttpAnswerText(req, 503, pstrdup("{\"status\":\"unavailable\",\"reason\":\"transactions are read-only\"}"), false);
	else
		CdpHttpAnswerText(req, 200, pstrdup("{\"status\":\"ok\"}"), false);
}

static void
AnswerMetrics(void *arg)
{
	CdpHttpAnswerText((CdpHttpHeld *) arg, 200, CdpHttpMetricsText(CdpHttpConnections()), true);
}

/*
 * One request.  Careless: in the round's transaction itself, so that a
 * round costs no subtransaction (hundreds of them would overflow the
 * snapshot's subtransaction cache for every session); careful: in a
 * subtransaction of its own, so an error refuses this request only.  What
 * judging it allocates (a gzip body inflated, its JSON scanned: a few times
 * cdp.max_request_bytes) is freed before the next request, so a round's
 * memory does not grow with the number of requests it holds.
 */
static void
RunRequest(CdpHttpHeld *req, bool careful)
{
	ErrorData  *edata;
	CdpSubxactWork work = req->route == CDP_ROUTE_METRICS ? AnswerMetrics :
		CdpHttpRouteIsProfile(req->route) ? CdpHttpServeProfile : QueueRequest;
	MemoryContext cxt;
	MemoryContext old;

	if (req->route == CDP_ROUTE_HEALTH)
	{
		AnswerHealth(req);
		return;
	}
	cxt = AllocSetContextCreate(CurrentMemoryContext, "cdp http request",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	if (!careful)
		work(req);
	else
	{
		edata = CdpRunInSubtransaction(work, req, CatchAll);
		if (edata != NULL)
		{
			req->await_commit = false;
			AnswerError(req, edata);
		}
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}

/* forget the answers of an attempt that rolled back */
static void
ForgetAnswers(dlist_head *held)
{
	dlist_iter	it;

	dlist_foreach(it, held)
	{
		CdpHttpHeld *req = dlist_container(CdpHttpHeld, node, it.cur);

		req->status = 0;
		req->await_commit = false;
		req->events = 0;
		req->retry_after = 0;
	}
}

/*
 * Run every request of held in one transaction (read-only for reads); true
 * when it committed.  *installed is false when pg_cdp is no longer
 * installed.
 */
static bool
RunRound(dlist_head *held, bool careful, bool reads, bool *installed)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool committed = false;

	*installed = true;
	PG_TRY();
	{
		Oid			owner;
		Oid			save_user;
		int			save_sec;
		dlist_iter	it;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		if (reads)
			XactReadOnly = true;
		PushActiveSnapshot(GetTransactionSnapshot());
		owner = CdpExtensionOwner();
		if (OidIsValid(owner))
		{
			pgstat_report_activity(STATE_RUNNING, reads ? "cdp http: reading profiles" :
								   "cdp http: queueing requests");
			/* a 200 promises durability, whatever the server's default */
			if (!reads && synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
				(void) set_config_option("synchronous_commit", "local", PGC_SUSET,
										 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
			GetUserIdAndSecContext(&save_user, &save_sec);
			SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
			SPI_connect();
			dlist_foreach(it, held)
				RunRequest(dlist_container(CdpHttpHeld, node, it.cur), careful);
			SPI_finish();
			SetUserIdAndSecContext(save_user, save_sec);
		}
		else
			*installed = false;
		PopActiveSnapshot();
		CommitTransactionCommand();
		committed = true;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		if (careful)
			EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	return committed;
}

/*
 * Run every request of held in one transaction, and again with a
 * subtransaction per request when one of them raised an error; true when
 * the transaction committed.
 */
static bool
RunRequests(dlist_head *held, bool reads, bool *installed)
{
	bool		committed = RunRound(held, false, reads, installed);

	if (!committed && !CdpHttpStopRequested())
	{
		/* some request raised an error: again, each on its own */
		ForgetAnswers(held);
		committed = RunRound(held, true, reads, installed);
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	return committed;
}

/*
 * Answer every request of held, queueing what is to be queued in one
 * transaction (tried again with a subtransaction per request when one of
 * them raised an error); those that wait for the commit get 200 when it
 * succeeded and 503 (retry) when it did not.  Returns false when pg_cdp is
 * no longer installed.
 */
bool
CdpHttpCommitHeld(dlist_head *held)
{
	bool		installed;
	bool		committed;
	dlist_iter	it;

	committed = RunRequests(held, false, &installed);
	pgstat_report_stat(false);

	dlist_foreach(it, held)
	{
		CdpHttpHeld *req = dlist_container(CdpHttpHeld, node, it.cur);

		if (req->status != 0 && !req->await_commit)
			continue;
		if (committed && installed)
			CdpHttpAnswerText(req, 200, pstrdup("{\"success\":true}"), false);
		else
		{
			req->retry_after = 1;
			req->events = 0;
			CdpHttpAnswer(req, 503, "unavailable",
						  installed ? "the database could not commit the request; retry" :
						  "pg_cdp is not installed in this database");
		}
	}
	return installed;
}

/*
 * Answer every read of reads (profile API requests) in one read-only
 * transaction, run again with a subtransaction per request when one raised
 * an error; a read left unanswered (the database could not run it) gets
 * 503.  Returns false when pg_cdp is no longer installed.
 */
bool
CdpHttpServeReads(dlist_head *reads)
{
	bool		installed;
	bool		done;
	dlist_iter	it;

	done = RunRequests(reads, true, &installed);
	dlist_foreach(it, reads)
	{
		CdpHttpHeld *req = dlist_container(CdpHttpHeld, node, it.cur);

		if (done && installed && req->status != 0)
			continue;
		req->retry_after = 1;
		CdpHttpAnswer(req, 503, "unavailable",
					  installed ? "the database could not answer the request; retry" :
					  "pg_cdp is not installed in this database");
	}
	return installed;
}
