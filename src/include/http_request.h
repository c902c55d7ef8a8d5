/*
 * http_request.h
 *	  Turning an HTTP request of the Segment / RudderStack tracking API into
 *	  what the inbox queues: the route of a URL, the write key, the decoded
 *	  body and whether a single call is acceptable.  No database access and
 *	  no ereport, so it also builds as frontend code for the fuzzer.
 */
#ifndef CDP_HTTP_REQUEST_H
#define CDP_HTTP_REQUEST_H

typedef enum CdpHttpRoute
{
	CDP_ROUTE_UNKNOWN = 0,
	CDP_ROUTE_TRACK,			/* single calls: one message, its type the path's */
	CDP_ROUTE_IDENTIFY,
	CDP_ROUTE_PAGE,
	CDP_ROUTE_SCREEN,
	CDP_ROUTE_GROUP,
	CDP_ROUTE_ALIAS,
	CDP_ROUTE_BATCH,			/* /v1/batch, /v1/b, /v1/import: an envelope */
	CDP_ROUTE_HEALTH,
	CDP_ROUTE_METRICS,
	CDP_ROUTE_COUNT
} CdpHttpRoute;

/* the bounds a request is held to (the cdp.* settings of the same names) */
typedef struct CdpHttpLimits
{
	int			max_request_bytes;	/* a whole body, after decompression */
	int			max_event_bytes;	/* a single call's message */
	int			max_inflate_ratio;	/* decompressed bytes per compressed byte */
} CdpHttpLimits;

/* what to do with an ingest request */
typedef struct CdpHttpIngest
{
	int			status;			/* 0: queue payload; else the HTTP status to answer */
	const char *error;			/* a short code for the error body */
	char	   *message;		/* why, for people */
	char	   *write_key;		/* from the Authorization header or the body */
	const char *payload;		/* the text to queue */
	int			payload_len;
	int			messages;		/* how many messages payload holds */
} CdpHttpIngest;

/* deeper JSON is refused before it is parsed (parsing recurses) */
#define CDP_HTTP_MAX_JSON_DEPTH 512

extern CdpHttpRoute CdpHttpRouteOf(const char *url);
extern const char *CdpHttpRouteLabel(CdpHttpRoute route);
extern bool CdpHttpRouteTakesPost(CdpHttpRoute route);
extern void CdpHttpIngestRequest(CdpHttpRoute route, const char *authorization,
								 const char *content_encoding,
								 const char *body, size_t body_len,
								 const CdpHttpLimits *limits, CdpHttpIngest *out);

#endif							/* CDP_HTTP_REQUEST_H */
