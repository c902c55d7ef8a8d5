/*
 * http_request.h
 *	  Turning an HTTP request of the Segment / RudderStack tracking API into
 *	  what the inbox queues: the route of a URL, the write key, the decoded
 *	  body and whether a single call is acceptable; and a profile API
 *	  request into its read key and identifier.  No database access and
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
	CDP_ROUTE_PROFILE_TRAITS,	/* GET /v1/profiles/{identifier}/traits */
	CDP_ROUTE_PROFILE_AUDIENCES,	/* GET /v1/profiles/{identifier}/audiences */
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

/* what a profile API request asks */
typedef struct CdpHttpProfileAsk
{
	int			status;			/* 0, or 401: no usable read key was sent */
	const char *error;			/* for a 401 */
	char	   *message;
	char	   *read_key;		/* from Bearer, or Basic's user name */
	char	   *identifier;		/* the path's {identifier}, percent-decoded; NULL: */
	char	   *id_message;		/* ... why it is refused (400 invalid_identifier) */
} CdpHttpProfileAsk;

/* the longest {identifier} taken, decoded: a 63-byte type, ':' and 1024 bytes of value fit */
#define CDP_HTTP_MAX_IDENTIFIER_BYTES 1100

/* deeper JSON is refused before it is parsed (parsing recurses) */
#define CDP_HTTP_MAX_JSON_DEPTH 512

extern CdpHttpRoute CdpHttpRouteOf(const char *url);
extern const char *CdpHttpRouteLabel(CdpHttpRoute route);
extern bool CdpHttpRouteTakesPost(CdpHttpRoute route);
extern bool CdpHttpRouteIsProfile(CdpHttpRoute route);
extern bool CdpHttpKeyIsPrintable(const char *key);
extern void CdpHttpIngestRequest(CdpHttpRoute route, const char *authorization,
								 const char *content_encoding,
								 const char *body, size_t body_len,
								 const CdpHttpLimits *limits, CdpHttpIngest *out);
extern void CdpHttpProfileRequest(const char *url, const char *authorization,
								  CdpHttpProfileAsk *out);

#endif							/* CDP_HTTP_REQUEST_H */
