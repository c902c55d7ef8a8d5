/*
 * http_inflate.c
 *	  Decoding a gzip (or zlib) request body with zlib, bounded in what it
 *	  may produce: a few kilobytes that inflate to gigabytes (a gzip bomb)
 *	  stop at the request limit or at the ratio guard, whichever comes
 *	  first, having never held more than the limit.  Frontend-safe (the
 *	  fuzzer builds it): palloc, no ereport.
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <zlib.h>

#include "http_inflate.h"

/* below this much output the ratio is not judged: tiny bodies compress oddly */
#define RATIO_FREE_BYTES (64 * 1024)

/* zlib's allocations in the caller's memory context, failing softly */
static voidpf
InflateAlloc(voidpf opaque, uInt items, uInt size)
{
	return palloc_extended((Size) items * size, MCXT_ALLOC_NO_OOM);
}

static void
InflateFree(voidpf opaque, voidpf address)
{
	pfree(address);
}

/*
 * Inflate in[0..in_len) into *out (NUL-terminated, *out_len bytes).  Accepts
 * gzip and zlib streams, and several gzip members one after another.
 * Returns CDP_INFLATE_OK or why not, with *why for people.
 */
CdpInflateResult
CdpHttpInflate(const char *in, size_t in_len, int max_out, int max_ratio,
			   char **out, size_t *out_len, char **why)
{
	z_stream	zs;
	size_t		produced = 0;	/* zs.total_out restarts with each member */
	size_t		cap;
	char	   *buf;
	int			rc;
	CdpInflateResult result = CDP_INFLATE_OK;

	*out = NULL;
	*out_len = 0;
	*why = NULL;
	memset(&zs, 0, sizeof(zs));
	zs.zalloc = InflateAlloc;
	zs.zfree = InflateFree;
	/* 15 + 32: a gzip or zlib header, detected */
	if (inflateInit2(&zs, 15 + 32) != Z_OK)
	{
		*why = psprintf("could not start decompressing the body");
		return CDP_INFLATE_CORRUPT;
	}
	cap = Min((size_t) max_out + 1, in_len * 4 + 1024);
	buf = palloc(cap + 1);
	zs.next_in = (Bytef *) in;
	zs.avail_in = in_len;
	for (;;)
	{
		if (produced >= cap)
		{
			if (cap > (size_t) max_out)
			{
				*why = psprintf("the body decompresses to more than cdp.max_request_bytes (%d)",
								max_out);
				result = CDP_INFLATE_TOO_LARGE;
				break;
			}
			cap = Min((size_t) max_out + 1, cap * 2);
			buf = repalloc(buf, cap + 1);
		}
		zs.next_out = (Bytef *) buf + produced;
		zs.avail_out = cap - produced;
		rc = inflate(&zs, Z_NO_FLUSH);
		produced = cap - zs.avail_out;
		if (produced > RATIO_FREE_BYTES && produced > (size_t) max_ratio * in_len)
		{
			*why = psprintf("the body decompresses to more than %d times its size", max_ratio);
			result = CDP_INFLATE_RATIO;
			break;
		}
		if (rc == Z_STREAM_END)
		{
			if (zs.avail_in == 0)
				break;
			/* another gzip member follows */
			if (inflateReset(&zs) != Z_OK)
			{
				*why = psprintf("could not decompress the body");
				result = CDP_INFLATE_CORRUPT;
				break;
			}
			continue;
		}
		if (rc == Z_OK)
			continue;
		if (rc == Z_BUF_ERROR && zs.avail_out > 0)
		{
			*why = psprintf("the compressed body is truncated");
			result = CDP_INFLATE_CORRUPT;
			break;
		}
		if (rc == Z_BUF_ERROR)
			continue;			/* the output is full: grown above */
		*why = psprintf("the body is not valid gzip: %s", zs.msg ? zs.msg : "corrupt data");
		result = CDP_INFLATE_CORRUPT;
		break;
	}
	if (result == CDP_INFLATE_OK)
	{
		buf[produced] = '\0';
		*out = buf;
		*out_len = produced;
	}
	else
		pfree(buf);
	inflateEnd(&zs);
	return result;
}
