/*
 * http_server.c
 *	  The HTTP endpoint's worker: libmicrohttpd parses HTTP, driven from this
 *	  process's own loop (a WaitEventSet on the latch, postmaster death and
 *	  libmicrohttpd's epoll descriptor), so no other thread exists and every
 *	  call into PostgreSQL happens outside libmicrohttpd's stack.
 *
 *	  libmicrohttpd's callbacks only collect: a request's body is kept (up to
 *	  cdp.max_request_bytes, refused from its Content-Length when larger),
 *	  then its connection is suspended and the request held.  After each pass
 *	  of libmicrohttpd the loop answers the profile API's reads held (in a
 *	  read-only transaction, and sends those answers at once), then hands
 *	  every other held request to the group commit (http_commit.c), then
 *	  resumes their connections with the answers.
 *
 *	  Slow clients: libmicrohttpd closes a connection silent for
 *	  cdp.http_idle_timeout; one that keeps sending a byte now and then but
 *	  has not completed a request within cdp.http_request_timeout of its
 *	  previous one (or its start) is shut down here.  On SIGTERM, held
 *	  requests are answered 503 (their clients retry elsewhere or later)
 *	  before the listener closes; a round waiting on a lock is cancelled so
 *	  that it does too.
 */
#include "postgres.h"

#include <microhttpd.h>
#include <netdb.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "access/xact.h"
#include "common/string.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "http_server.h"
#include "workers.h"

/* how often slow clients are looked for */
#define REAP_INTERVAL_MS	1000
/* the most memory the bodies of requests in progress may take together */
#define BUFFER_BUDGET		((size_t) 256 * 1024 * 1024)
/* how long shutting down waits for 503 answers to go out */
#define DRAIN_MS			2000

/* a client connection, for the slow-client check */
typedef struct ClientConn
{
	dlist_node	node;
	int			fd;
	TimestampTz since;			/* its start, or its last request's end */
	bool		held;			/* its request waits for the database */
	bool		cut;			/* already shut down here */
	bool		hung_up;		/* its client had closed at the last check */
	TimestampTz hung_up_since;	/* ... and since was this then */
} ClientConn;

static struct MHD_Daemon *daemon_handle = NULL;
static dlist_head held = DLIST_STATIC_INIT(held);
static dlist_head reads = DLIST_STATIC_INIT(reads);	/* profile API requests held */
static MemoryContext round_cxt = NULL;
static dlist_head conns = DLIST_STATIC_INIT(conns);
static int	nconns = 0;
static size_t buffered_bytes = 0;	/* bodies kept, against BUFFER_BUDGET */
static volatile sig_atomic_t stop_requested = false;
static volatile sig_atomic_t in_round = false;
static bool stopping = false;

/*
 * libmicrohttpd's first complaint since the last one logged, logged once its
 * call has returned; most are about clients (one hanging up mid-request),
 * which could otherwise write a line each as fast as they connect.
 */
#define MHD_LOG_INTERVAL_MS	10000
static char mhd_log[256];
static bool mhd_log_pending = false;
static int	mhd_log_unlogged = 0;	/* complaints since, not logged */
static TimestampTz mhd_log_last = 0;

static void
HandleSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	stop_requested = true;
	/* a round waiting on a lock is cancelled: its requests are answered 503 */
	if (in_round)
	{
		QueryCancelPending = true;
		InterruptPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
KeepMhdLog(void *cls, const char *fmt, va_list ap)
{
	if (mhd_log_pending)
		mhd_log_unlogged++;
	else
		vsnprintf(mhd_log, sizeof(mhd_log), fmt, ap);
	mhd_log_pending = true;
}

/* log the complaint kept, unless one was logged less than MHD_LOG_INTERVAL_MS ago */
static void
FlushMhdLog(void)
{
	TimestampTz now;

	if (!mhd_log_pending)
		return;
	mhd_log_pending = false;
	now = GetCurrentTimestamp();
	if (mhd_log_last != 0 &&
		!TimestampDifferenceExceeds(mhd_log_last, now, MHD_LOG_INTERVAL_MS))
	{
		mhd_log_unlogged++;
		return;
	}
	(void) pg_strip_crlf(mhd_log);
	if (mhd_log_unlogged > 0)
		ereport(LOG,
				(errmsg("pg_cdp http: %s", mhd_log),
				 errdetail("%d more messages of libmicrohttpd since the last one logged were not logged.",
						   mhd_log_unlogged)));
	else
		ereport(LOG, (errmsg("pg_cdp http: %s", mhd_log)));
	mhd_log_unlogged = 0;
	mhd_log_last = now;
}

bool
CdpHttpStopRequested(void)
{
	return stop_requested;
}

int
CdpHttpConnections(void)
{
	return nconns;
}

/* s JSON-escaped into a malloc'd copy (no palloc: callbacks use it) */
static char *
JsonStringMalloc(const char *s)
{
	size_t		n = strlen(s);
	char	   *out = malloc(n * 6 + 3);
	char	   *p = out;

	if (out == NULL)
		return NULL;
	*p++ = '"';
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c == '"' || c == '\\')
		{
			*p++ = '\\';
			*p++ = c;
		}
		else if (c < 0x20)
			p += sprintf(p, "\\u%04x", c);
		else
			*p++ = c;
	}
	*p++ = '"';
	*p = '\0';
	return out;
}

/* decide a JSON error answer: {"success":false,"error":...,"message":...} */
void
CdpHttpAnswer(CdpHttpHeld *req, int status, const char *error, const char *message)
{
	char	   *msg = JsonStringMalloc(message ? message : "");
	size_t		size = (msg ? strlen(msg) : 2) + strlen(error) + 64;

	req->status = status;
	req->answer_is_text = false;
	if (req->answer)
		free(req->answer);
	req->answer = malloc(size);
	if (req->answer != NULL)
		snprintf(req->answer, size, "{\"success\":false,\"error\":\"%s\",\"message\":%s}",
				 error, msg ? msg : "\"\"");
	free(msg);
}

/* decide an answer with this body (palloc'd, copied) */
void
CdpHttpAnswerText(CdpHttpHeld *req, int status, char *text, bool is_text)
{
	req->status = status;
	req->answer_is_text = is_text;
	if (req->answer)
		free(req->answer);
	req->answer = strdup(text);
	pfree(text);
}

static ClientConn *
ConnOf(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return info ? (ClientConn *) info->socket_context : NULL;
}

/* hand the decided answer to libmicrohttpd (inside its callback) */
static enum MHD_Result
QueueAnswer(CdpHttpHeld *req)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;
	char		header[32];
	const char *answer = req->answer ? req->answer : "";

	resp = MHD_create_response_from_buffer(strlen(answer), (void *) answer,
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
							req->answer_is_text ? "text/plain; version=0.0.4; charset=utf-8" :
							"application/json");
	if (CdpHttpRouteTakesPost(req->route))
		MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
	if (req->status == 405)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
								CdpHttpRouteTakesPost(req->route) ? "POST, OPTIONS" : "GET, HEAD");
	if (req->retry_after > 0)
	{
		snprintf(header, sizeof(header), "%d", req->retry_after);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, header);
		if (req->status == 429)
		{
			/*
			 * epoch milliseconds: what Segment's node SDK reads; counted from
			 * now in milliseconds, since whole seconds could name a moment
			 * already past
			 */
			snprintf(header, sizeof(header), INT64_FORMAT,
					 GetCurrentTimestamp() / 1000 +
					 (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
					 SECS_PER_DAY * 1000 +
					 (int64) req->retry_after * 1000);
			MHD_add_response_header(resp, "X-RateLimit-Reset", header);
		}
	}
	if (stopping)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
	ret = MHD_queue_response(req->conn, req->status, resp);
	MHD_destroy_response(resp);
	req->answer_queued = true;
	CdpHttpCountRequest(req->route, req->status,
						(double) (GetCurrentTimestamp() - req->started) / USECS_PER_SEC,
						req->events);
	return ret;
}

/* answer now, from inside the callback, with a fixed message */
static enum MHD_Result
AnswerNow(CdpHttpHeld *req, int status, const char *error, const char *message)
{
	CdpHttpAnswer(req, status, error, message);
	return QueueAnswer(req);
}

/*
 * The most body a route's request may bring: a batch cdp.max_request_bytes,
 * a single call cdp.max_event_bytes (and a little more, for a gzip header).
 */
static size_t
BodyLimit(CdpHttpRoute route)
{
	if (route == CDP_ROUTE_BATCH || cdp_max_event_bytes + 1024 > cdp_max_request_bytes)
		return (size_t) cdp_max_request_bytes;
	return (size_t) cdp_max_event_bytes + 1024;
}

static enum MHD_Result
AnswerTooLarge(CdpHttpHeld *req)
{
	return AnswerNow(req, 400, "too_large",
					 req->route == CDP_ROUTE_BATCH ?
					 "the body is larger than cdp.max_request_bytes" :
					 "the message is larger than cdp.max_event_bytes");
}

/*
 * Stops at a Content-Length other than *cls, the first, setting *cls NULL:
 * libmicrohttpd reads the body by the first, a proxy in front may have read
 * it by another, and what follows would be taken for a request of its own.
 */
static enum MHD_Result
OtherLength(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	const char **first = cls;

	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0 || strcmp(value, *first) == 0)
		return MHD_YES;
	*first = NULL;
	return MHD_NO;
}

/* the first call for a request: route and method, and a body too large to take */
static enum MHD_Result
StartRequest(CdpHttpHeld *req, const char *method)
{
	const char *length;

	if (strcmp(method, "OPTIONS") == 0)
	{
		struct MHD_Response *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
		enum MHD_Result ret;

		if (resp == NULL)
			return MHD_NO;
		/* browsers ask before posting JSON from another origin */
		MHD_add_response_header(resp, "Access-Control-Allow-Origin", "*");
		MHD_add_response_header(resp, "Access-Control-Allow-Methods", "POST, GET, OPTIONS");
		MHD_add_response_header(resp, "Access-Control-Allow-Headers",
								"Content-Type, Content-Encoding, Authorization");
		MHD_add_response_header(resp, "Access-Control-Max-Age", "86400");
		ret = MHD_queue_response(req->conn, MHD_HTTP_NO_CONTENT, resp);
		MHD_destroy_response(resp);
		req->answer_queued = true;
		CdpHttpCountRequest(req->route, MHD_HTTP_NO_CONTENT, 0, 0);
		return ret;
	}
	if (req->route == CDP_ROUTE_UNKNOWN)
		return AnswerNow(req, 404, "not_found", "no such path: the tracking API is under /v1/");
	if (CdpHttpRouteTakesPost(req->route) ? strcmp(method, "POST") != 0 :
		strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return AnswerNow(req, 405, "method_not_allowed",
						 CdpHttpRouteTakesPost(req->route) ? "use POST" : "use GET");

	req->authorization = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
													 MHD_HTTP_HEADER_AUTHORIZATION);
	req->content_encoding = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
														MHD_HTTP_HEADER_CONTENT_ENCODING);
	length = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
										 MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (length != NULL)
	{
		const char *first = length;

		(void) MHD_get_connection_values(req->conn, MHD_HEADER_KIND, OtherLength, &first);
		if (first == NULL)
			return AnswerNow(req, 400, "bad_request",
							 "the request has Content-Length headers that disagree");
		if (strtoull(length, NULL, 10) > (unsigned long long) BodyLimit(req->route))
			return AnswerTooLarge(req);
	}
	return MHD_YES;
}

/* drop what a request's body holds, giving its bytes back to the budget */
static void
DropBody(CdpHttpHeld *req)
{
	buffered_bytes -= req->cap;
	free(req->body);
	req->body = NULL;
	req->cap = 0;
}

/*
 * Keep a piece of the body.  Past the route's limit, or when every body
 * held together would pass BUFFER_BUDGET, the rest is read and dropped.
 */
static void
KeepBody(CdpHttpHeld *req, const char *data, size_t size)
{
	size_t		limit = BodyLimit(req->route);

	if (req->too_large || req->over_budget)
		return;
	if (req->len + size > limit)
	{
		req->too_large = true;
		DropBody(req);
		return;
	}
	if (req->len + size + 1 > req->cap)
	{
		size_t		cap = Min(Max(req->cap * 2, Max(req->len + size + 1, 16384)), limit + 1);
		char	   *body = NULL;

		if (buffered_bytes + cap - req->cap <= BUFFER_BUDGET)
			body = realloc(req->body, cap);
		if (body == NULL)
		{
			req->over_budget = true;
			DropBody(req);
			return;
		}
		buffered_bytes += cap - req->cap;
		req->body = body;
		req->cap = cap;
	}
	memcpy(req->body + req->len, data, size);
	req->len += size;
	req->body[req->len] = '\0';
}

/* libmicrohttpd's handler: called on headers, on each piece of body, at its end, and on resume */
static enum MHD_Result
HandleRequest(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			  const char *version, const char *upload_data, size_t *upload_data_size,
			  void **con_cls)
{
	CdpHttpHeld *req = *con_cls;
	ClientConn *cc;

	if (req == NULL)
	{
		req = calloc(1, sizeof(CdpHttpHeld));
		if (req == NULL)
			return MHD_NO;
		req->conn = conn;
		req->url = url;
		req->route = CdpHttpRouteOf(url);
		req->started = GetCurrentTimestamp();
		*con_cls = req;
		return StartRequest(req, method);
	}
	if (req->answer_queued)
	{
		*upload_data_size = 0;	/* answered before its body: the rest is dropped */
		return MHD_YES;
	}
	if (req->status != 0)
		return QueueAnswer(req);	/* resumed with its answer */
	if (*upload_data_size > 0)
	{
		KeepBody(req, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (req->too_large)
		return AnswerTooLarge(req);
	if (req->over_budget)
	{
		req->retry_after = 1;
		return AnswerNow(req, 429, "overloaded",
						 "the endpoint holds as many request bodies as it may; retry");
	}
	if (stopping)
	{
		req->retry_after = 1;
		return AnswerNow(req, 503, "unavailable", "the server is shutting down; retry");
	}
	/* the whole request is here: hold it for the next group commit */
	cc = ConnOf(conn);
	if (cc)
		cc->held = true;
	MHD_suspend_connection(conn);
	dlist_push_tail(CdpHttpRouteIsProfile(req->route) ? &reads : &held, &req->node);
	return MHD_YES;
}

static void
RequestCompleted(void *cls, struct MHD_Connection *conn, void **con_cls,
				 enum MHD_RequestTerminationCode toe)
{
	CdpHttpHeld *req = *con_cls;
	ClientConn *cc = ConnOf(conn);

	if (cc)
	{
		cc->held = false;
		cc->since = GetCurrentTimestamp();
	}
	if (req == NULL)
		return;
	DropBody(req);
	free(req->answer);
	free(req);
	*con_cls = NULL;
}

static void
ConnectionNotified(void *cls, struct MHD_Connection *conn, void **socket_context,
				   enum MHD_ConnectionNotificationCode toe)
{
	ClientConn *cc = *socket_context;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED)
	{
		const union MHD_ConnectionInfo *info =
			MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

		cc = calloc(1, sizeof(ClientConn));
		if (cc == NULL)
			return;
		cc->fd = info ? info->connect_fd : -1;
		cc->since = GetCurrentTimestamp();
		dlist_push_tail(&conns, &cc->node);
		nconns++;
		*socket_context = cc;
		MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
								  (unsigned int) cdp_http_idle_timeout_secs);
	}
	else if (cc != NULL)
	{
		dlist_delete(&cc->node);
		nconns--;
		free(cc);
		*socket_context = NULL;
	}
}

/*
 * Paths are handed over as sent: http_request.c decodes them, so that a
 * profile's identifier holding an escaped '/' or '%00' is read as sent.
 */
static size_t
KeepEscapes(void *cls, struct MHD_Connection *conn, char *s)
{
	return strlen(s);
}

/*
 * Whether the client has closed its end: libmicrohttpd (0.9.75, with epoll)
 * misses an end of stream that arrives together with the request's last
 * bytes, and would keep such a connection, its slot and its partial body
 * for cdp.http_idle_timeout.
 */
static bool
ClientHungUp(int fd)
{
	char		c;
	ssize_t		n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

	return n == 0 ||
		(n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/*
 * Shut down connections that have taken too long over a request, and those
 * whose client has hung up without a request held: seen closed at two
 * checks in a row with no request completed between, so that a request
 * libmicrohttpd has read but not yet handed over is not cut.
 */
static void
CutSlowClients(TimestampTz now)
{
	dlist_iter	it;
	TimestampTz cutoff = now - (TimestampTz) cdp_http_request_timeout_secs * USECS_PER_SEC;

	dlist_foreach(it, &conns)
	{
		ClientConn *cc = dlist_container(ClientConn, node, it.cur);
		bool		hung_up;

		if (cc->held || cc->cut || cc->fd < 0)
		{
			cc->hung_up = false;
			continue;
		}
		hung_up = ClientHungUp(cc->fd);
		if (cc->since < cutoff ||
			(hung_up && cc->hung_up && cc->hung_up_since == cc->since))
		{
			shutdown(cc->fd, SHUT_RDWR);
			cc->cut = true;
		}
		cc->hung_up = hung_up;
		cc->hung_up_since = cc->since;
	}
}

/* let enough descriptors be open for every connection allowed */
static void
RaiseDescriptorLimit(void)
{
	struct rlimit rl;
	rlim_t		want = (rlim_t) cdp_http_max_connections + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = Min(want, rl.rlim_max);
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
		ereport(LOG,
				(errmsg("pg_cdp http: only %lu file descriptors are allowed, fewer than cdp.http_max_connections needs",
						(unsigned long) rl.rlim_cur)));
}

/* start listening; exits the worker (to be started again later) when it cannot */
static void
StartDaemon(void)
{
	struct addrinfo hints;
	struct addrinfo *addr = NULL;
	char		port[16];
	const char *host = cdp_http_listen_address;
	unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	int			rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%d", cdp_http_port);
	if (host == NULL || *host == '\0' || strcmp(host, "*") == 0)
		host = "0.0.0.0";
	rc = getaddrinfo(host, port, &hints, &addr);
	if (rc != 0)
	{
		ereport(LOG,
				(errmsg("pg_cdp http: cannot listen on \"%s\": %s",
						cdp_http_listen_address, gai_strerror(rc))));
		pg_usleep(10 * USECS_PER_SEC);
		proc_exit(1);
	}
	if (addr->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	RaiseDescriptorLimit();
	daemon_handle = MHD_start_daemon(flags, (uint16) cdp_http_port, NULL, NULL,
									 HandleRequest, NULL,
									 MHD_OPTION_EXTERNAL_LOGGER, KeepMhdLog, NULL,
									 MHD_OPTION_UNESCAPE_CALLBACK, KeepEscapes, NULL,
									 MHD_OPTION_SOCK_ADDR, addr->ai_addr,
									 MHD_OPTION_CONNECTION_LIMIT,
									 (unsigned int) cdp_http_max_connections,
									 MHD_OPTION_CONNECTION_TIMEOUT,
									 (unsigned int) cdp_http_idle_timeout_secs,
									 MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024,
									 MHD_OPTION_NOTIFY_COMPLETED, RequestCompleted, NULL,
									 MHD_OPTION_NOTIFY_CONNECTION, ConnectionNotified, NULL,
									 MHD_OPTION_END);
	freeaddrinfo(addr);
	FlushMhdLog();
	if (daemon_handle == NULL)
	{
		ereport(LOG,
				(errmsg("pg_cdp http: cannot listen on %s port %d", cdp_http_listen_address,
						cdp_http_port),
				 errhint("Is another server using the port?  The worker tries again in 10 seconds.")));
		pg_usleep(10 * USECS_PER_SEC);
		proc_exit(1);
	}
	ereport(LOG,
			(errmsg("pg_cdp http: listening on %s port %d", cdp_http_listen_address,
					cdp_http_port)));
}

/* one pass of libmicrohttpd: accept, read, call back, write */
static void
RunDaemon(void)
{
	MHD_run(daemon_handle);
	FlushMhdLog();
}

/* resume every connection of list with its answer */
static void
ReleaseHeld(dlist_head *list)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, list)
	{
		CdpHttpHeld *req = dlist_container(CdpHttpHeld, node, it.cur);

		dlist_delete(&req->node);
		MHD_resume_connection(req->conn);
	}
}

/*
 * Answer the requests of list with round (a group commit, or reads) in the
 * round's memory, then resume them; false when pg_cdp is not installed.
 */
static bool
RunHeld(dlist_head *list, bool (*round) (dlist_head *))
{
	bool		installed;

	MemoryContextSwitchTo(round_cxt);
	in_round = true;
	installed = round(list);
	in_round = false;
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextReset(round_cxt);
	ReleaseHeld(list);
	return installed;
}

/* answer the requests of list 503: the endpoint is stopping */
static void
AnswerStopping(dlist_head *list)
{
	dlist_iter	it;

	dlist_foreach(it, list)
	{
		CdpHttpHeld *req = dlist_container(CdpHttpHeld, node, it.cur);

		req->retry_after = 1;
		CdpHttpAnswer(req, 503, "unavailable", "the server is shutting down; retry");
	}
	ReleaseHeld(list);
}

/* answer held requests 503, let the answers go out, close the listener */
static void
StopDaemon(WaitEventSet *wes)
{
	dlist_iter	it;
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DRAIN_MS);

	stopping = true;
	AnswerStopping(&reads);
	AnswerStopping(&held);
	while (GetCurrentTimestamp() < until)
	{
		WaitEvent	ev;
		bool		busy = false;

		RunDaemon();
		dlist_foreach(it, &conns)
			busy |= dlist_container(ClientConn, node, it.cur)->held;
		if (!busy)
			break;
		(void) WaitEventSetWait(wes, 50, &ev, 1, PG_WAIT_EXTENSION);
	}
	MHD_stop_daemon(daemon_handle);
	daemon_handle = NULL;
}

void
cdp_http_worker_main(Datum arg)
{
	Oid			dboid;
	WaitEventSet *wes;
	const union MHD_DaemonInfo *info;
	TimestampTz last_reap = 0;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, HandleSigterm);
	BackgroundWorkerUnblockSignals();
	CdpClaimWorkerSlot(&CdpPool->http);

	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("pg_cdp http");
	SetConfigOption("search_path", "pg_catalog, cdp", PGC_SUSET, PGC_S_SESSION);
	StartTransactionCommand();
	CdpStandDownOnCitusWorker(&CdpPool->http);
	CommitTransactionCommand();

	StartDaemon();
	info = MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_EPOLL_FD);
	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, info->epoll_fd, NULL, NULL);
	round_cxt = AllocSetContextCreate(TopMemoryContext, "cdp http round",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		WaitEvent	ev;
		MHD_UNSIGNED_LONG_LONG mhd_timeout;
		long		timeout = REAP_INTERVAL_MS;
		TimestampTz now;

		if (stop_requested)
			break;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		RunDaemon();
		if (!dlist_is_empty(&reads))
		{
			if (!RunHeld(&reads, CdpHttpServeReads))
				break;
			RunDaemon();		/* their answers go out before a commit's wait */
		}
		if (!dlist_is_empty(&held))
		{
			if (!RunHeld(&held, CdpHttpCommitHeld))
				break;
			continue;			/* send the answers; read what came meanwhile */
		}
		if (!dlist_is_empty(&reads))
			continue;			/* reads that came while answers went out */

		now = GetCurrentTimestamp();
		if (now - last_reap >= REAP_INTERVAL_MS * 1000L)
		{
			CutSlowClients(now);
			last_reap = now;
		}
		if (MHD_get_timeout(daemon_handle, &mhd_timeout) == MHD_YES)
			timeout = Min(timeout, (long) mhd_timeout);
		(void) WaitEventSetWait(wes, timeout, &ev, 1, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	StopDaemon(wes);
	if (!stop_requested)
		CdpExitWorker(&CdpPool->http, CDP_EXIT_NO_EXTENSION);
	proc_exit(0);
}
