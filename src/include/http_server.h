/*
 * http_server.h
 *	  The HTTP endpoint's worker and what its parts share.
 */
#ifndef CDP_HTTP_SERVER_H
#define CDP_HTTP_SERVER_H

#include "datatype/timestamp.h"
#include "lib/ilist.h"

#include "http_request.h"

struct MHD_Connection;

/* a request in the worker, from its headers until its answer is sent */
typedef struct CdpHttpHeld
{
	dlist_node	node;			/* in the list of requests held for the database */
	struct MHD_Connection *conn;
	CdpHttpRoute route;
	TimestampTz started;		/* when its headers arrived */
	const char *url;			/* the path as sent, valid while the request lives */
	const char *authorization;	/* headers, valid while the request lives */
	const char *content_encoding;
	char	   *body;			/* malloc'd */
	size_t		len;
	size_t		cap;
	bool		too_large;		/* the body outgrew the limit: dropped unread */
	bool		over_budget;	/* no memory left for it: dropped, 429 */

	/* the answer, once decided */
	int			status;
	char	   *answer;			/* malloc'd */
	bool		answer_is_text; /* text/plain (metrics), else JSON */
	int			retry_after;	/* seconds, 0 for none */
	int			events;			/* messages it queued */
	bool		await_commit;	/* queued: 200 once the transaction commits */
	bool		answer_queued;
} CdpHttpHeld;

/* http_server.c */
extern void CdpHttpAnswer(CdpHttpHeld *req, int status, const char *error, const char *message);
extern void CdpHttpAnswerText(CdpHttpHeld *req, int status, char *text_palloced,
							  bool is_text);
extern int	CdpHttpConnections(void);
extern bool CdpHttpStopRequested(void);

/* http_commit.c: every request held in one transaction */
extern bool CdpHttpCommitHeld(dlist_head *held);
extern bool CdpHttpServeReads(dlist_head *reads);

/* http_profiles.c */
extern void CdpHttpServeProfile(void *arg);

/* http_metrics.c */
extern void CdpHttpCountRequest(CdpHttpRoute route, int status, double seconds, int events);
extern char *CdpHttpMetricsText(int connections);

#endif							/* CDP_HTTP_SERVER_H */
