/*
 * http_inflate.h
 *	  Bounded gzip decoding of request bodies.
 */
#ifndef CDP_HTTP_INFLATE_H
#define CDP_HTTP_INFLATE_H

typedef enum CdpInflateResult
{
	CDP_INFLATE_OK = 0,
	CDP_INFLATE_CORRUPT,		/* not gzip, or cut short */
	CDP_INFLATE_TOO_LARGE,		/* more than the request limit */
	CDP_INFLATE_RATIO			/* more than the ratio guard allows */
} CdpInflateResult;

extern CdpInflateResult CdpHttpInflate(const char *in, size_t in_len, int max_out,
									   int max_ratio, char **out, size_t *out_len,
									   char **why);

#endif							/* CDP_HTTP_INFLATE_H */
