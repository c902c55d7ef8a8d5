/*
 * redacted_text.c
 *	  cdp.redacted_text, the type of cdp.inbox's payload: text whose every
 *	  "writeKey" member has its value replaced by "[redacted]" as the value
 *	  is made, so a key COPY or an INSERT brings is never written to the
 *	  inbox's heap or WAL.  Its input and receive functions redact (COPY
 *	  calls them for every row and still inserts rows in groups, which a
 *	  BEFORE row trigger prevented); the assignment cast from text redacts
 *	  too (INSERT of text, cdp.ingest, the HTTP endpoint), and the cast back
 *	  to text is binary, so readers see text.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "utils/builtins.h"

#include "pg_cdp.h"

/* text, redacted: NULL-terminated as the text functions make it */
static text *
RedactedText(const char *str)
{
	return cstring_to_text(CdpRedactWriteKeys(str));
}

PG_FUNCTION_INFO_V1(cdp_redacted_text_in);

/* input function: what COPY (text and CSV) and literals bring */
Datum
cdp_redacted_text_in(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(RedactedText(PG_GETARG_CSTRING(0)));
}

PG_FUNCTION_INFO_V1(cdp_redacted_text_recv);

/* receive function: what binary COPY and binary parameters bring */
Datum
cdp_redacted_text_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int			nbytes;

	PG_RETURN_TEXT_P(RedactedText(pq_getmsgtext(buf, buf->len - buf->cursor, &nbytes)));
}

PG_FUNCTION_INFO_V1(cdp_redacted_text);

/*
 * The cast from text.  Most payloads hold neither the key nor an escape
 * that could spell it: those are checked in place and returned as they
 * are, without a copy.
 */
Datum
cdp_redacted_text(PG_FUNCTION_ARGS)
{
	text	   *t = PG_GETARG_TEXT_PP(0);
	const char *data = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	char	   *plain;
	const char *redacted;

	if (memchr(data, '\\', len) == NULL &&
		(len < 8 || memmem(data, len, "writeKey", 8) == NULL))
		PG_RETURN_TEXT_P(t);
	plain = text_to_cstring(t);
	redacted = CdpRedactWriteKeys(plain);
	if (redacted == plain)
		PG_RETURN_TEXT_P(t);
	PG_RETURN_TEXT_P(cstring_to_text(redacted));
}
