/*
 * identifier.c
 *	  The cdp.identifier type: text form "type:value", normalised on input so
 *	  that equal identifiers compare equal (white space trimmed, email
 *	  lower-cased, phone reduced to a leading '+' and digits).  Binary
 *	  send/receive, btree and hash support.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "identifier.h"

static bool
IsTypeChar(char c, bool first)
{
	if (c >= 'a' && c <= 'z')
		return true;
	return !first && ((c >= '0' && c <= '9') || c == '_');
}

static bool
IsSpace(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static bool
IsPhone(const char *type, int type_len)
{
	return type_len == 5 && memcmp(type, "phone", 5) == 0;
}

/*
 * Build a normalised identifier, or return NULL with *problem saying why.
 * Never throws for bad input, so the ingest path can record a violation
 * instead of failing a batch.
 */
CdpIdentifier *
CdpMakeIdentifier(const char *type, int type_len, const char *value, int value_len,
				  const char **problem)
{
	CdpIdentifier *id;
	char	   *out;
	int			out_len = 0;

	if (type_len < 1 || type_len > CDP_ID_TYPE_MAX)
	{
		*problem = "the type must be 1 to 63 characters";
		return NULL;
	}
	for (int i = 0; i < type_len; i++)
	{
		if (!IsTypeChar(type[i], i == 0))
		{
			*problem = "the type must match ^[a-z][a-z0-9_]{0,62}$";
			return NULL;
		}
	}

	while (value_len > 0 && IsSpace(*value))
	{
		value++;
		value_len--;
	}
	while (value_len > 0 && IsSpace(value[value_len - 1]))
		value_len--;
	if (value_len == 0)
	{
		*problem = "the value is empty";
		return NULL;
	}
	if (value_len > CDP_ID_VALUE_MAX)
	{
		*problem = "the value is longer than 1024 bytes";
		return NULL;
	}
	if (pg_encoding_verifymbstr(PG_UTF8, value, value_len) != value_len)
	{
		*problem = "the value is not valid UTF-8";
		return NULL;
	}

	id = palloc(offsetof(CdpIdentifier, data) + type_len + value_len);
	id->type_len = (uint8) type_len;
	memcpy(id->data, type, type_len);
	out = id->data + type_len;

	for (int i = 0; i < value_len; i++)
	{
		unsigned char c = (unsigned char) value[i];

		/* C0, DEL, and C1 (U+0080-U+009F, UTF-8 0xC2 0x80-0x9F) */
		if (c < 0x20 || c == 0x7f ||
			(c == 0xc2 && i + 1 < value_len &&
			 (unsigned char) value[i + 1] >= 0x80 && (unsigned char) value[i + 1] <= 0x9f))
		{
			pfree(id);
			*problem = "the value contains a control character";
			return NULL;
		}
		if (type_len == 5 && memcmp(type, "email", 5) == 0)
			out[out_len++] = pg_ascii_tolower(c);
		else if (IsPhone(type, type_len))
		{
			/* a leading '+' and the digits; punctuation and spaces go */
			if ((c == '+' && out_len == 0) || (c >= '0' && c <= '9'))
				out[out_len++] = c;
		}
		else
			out[out_len++] = c;
	}
	if (IsPhone(type, type_len) && (out_len == 0 || (out_len == 1 && out[0] == '+')))
	{
		pfree(id);
		*problem = "the phone number has no digits";
		return NULL;
	}
	SET_VARSIZE(id, offsetof(CdpIdentifier, data) + type_len + out_len);
	return id;
}

char *
CdpIdentifierToCString(const CdpIdentifier *id)
{
	int			vlen = IdValueLen(id);
	char	   *s = palloc(id->type_len + 1 + vlen + 1);

	memcpy(s, IdTypePtr(id), id->type_len);
	s[id->type_len] = ':';
	memcpy(s + id->type_len + 1, IdValuePtr(id), vlen);
	s[id->type_len + 1 + vlen] = '\0';
	return s;
}

/*
 * Order two identifiers given as (type, value) byte ranges: by type bytes,
 * shorter type first on a common prefix, then the same for the value.
 */
static int
CompareParts(const char *atype, int atype_len, const char *aval, int aval_len,
			 const char *btype, int btype_len, const char *bval, int bval_len)
{
	int			cmp;

	cmp = memcmp(atype, btype, Min(atype_len, btype_len));
	if (cmp != 0)
		return cmp;
	if (atype_len != btype_len)
		return atype_len < btype_len ? -1 : 1;
	cmp = memcmp(aval, bval, Min(aval_len, bval_len));
	if (cmp != 0)
		return cmp;
	if (aval_len != bval_len)
		return aval_len < bval_len ? -1 : 1;
	return 0;
}

int
CdpIdentifierCompare(const CdpIdentifier *a, const CdpIdentifier *b)
{
	return CompareParts(IdTypePtr(a), a->type_len, IdValuePtr(a), IdValueLen(a),
						IdTypePtr(b), b->type_len, IdValuePtr(b), IdValueLen(b));
}

/*
 * The same on values as they come from a tuple, short varlena header and
 * all: sorting and indexing call this millions of times, so nothing is
 * copied (PG_GETARG_*_PP leaves packed values where they are).
 */
static int
ComparePacked(const struct varlena *a, const struct varlena *b)
{
	const char *ad = VARDATA_ANY(a);
	const char *bd = VARDATA_ANY(b);
	int			atl = (uint8) ad[0];
	int			btl = (uint8) bd[0];

	return CompareParts(ad + 1, atl, ad + 1 + atl, VARSIZE_ANY_EXHDR(a) - 1 - atl,
						bd + 1, btl, bd + 1 + btl, VARSIZE_ANY_EXHDR(b) - 1 - btl);
}

/* compare arguments 0 and 1 in place, freeing any detoasted copy */
static int
CompareArgs(FunctionCallInfo fcinfo)
{
	struct varlena *a = PG_GETARG_VARLENA_PP(0);
	struct varlena *b = PG_GETARG_VARLENA_PP(1);
	int			c = ComparePacked(a, b);

	PG_FREE_IF_COPY(a, 0);
	PG_FREE_IF_COPY(b, 1);
	return c;
}

/*
 * CdpMakeIdentifier for SQL callers: bad input is 22P02 naming the problem.
 * input is the text shown in the message; NULL shows "type:value" from the
 * parts, formatted only when there is an error to report.
 */
static CdpIdentifier *
MakeOrThrow(const char *type, int type_len, const char *value, int value_len,
			const char *input)
{
	const char *problem = NULL;
	CdpIdentifier *id = CdpMakeIdentifier(type, type_len, value, value_len, &problem);

	if (id == NULL && input == NULL)
		input = psprintf("%.*s:%.*s", type_len, type, value_len, value);
	if (id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid input syntax for type cdp.identifier: \"%s\"", input),
				 errdetail("%c%s.", pg_ascii_toupper(problem[0]), problem + 1)));
	return id;
}

PG_FUNCTION_INFO_V1(cdp_identifier_in);

/* "type:value"; the type ends at the first ':', the value may hold more */
Datum
cdp_identifier_in(PG_FUNCTION_ARGS)
{
	char	   *input = PG_GETARG_CSTRING(0);
	char	   *colon = strchr(input, ':');

	if (colon == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid input syntax for type cdp.identifier: \"%s\"", input),
				 errdetail("Expected \"type:value\", for example \"email:alice@example.com\".")));
	PG_RETURN_POINTER(MakeOrThrow(input, colon - input, colon + 1, strlen(colon + 1), input));
}

PG_FUNCTION_INFO_V1(cdp_identifier_out);

Datum
cdp_identifier_out(PG_FUNCTION_ARGS)
{
	struct varlena *v = PG_GETARG_VARLENA_PP(0);
	const char *d = VARDATA_ANY(v);
	int			len = VARSIZE_ANY_EXHDR(v) - 1;
	int			tl = (uint8) d[0];
	char	   *s = palloc(len + 2);

	/* "type" ":" "value" from the packed bytes, without a detoasted copy */
	memcpy(s, d + 1, tl);
	s[tl] = ':';
	memcpy(s + tl + 1, d + 1 + tl, len - tl);
	s[len + 1] = '\0';
	PG_FREE_IF_COPY(v, 0);
	PG_RETURN_CSTRING(s);
}

PG_FUNCTION_INFO_V1(cdp_identifier_recv);

/* binary input is the text form, checked and normalised like text input */
Datum
cdp_identifier_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int			nbytes;
	char	   *s = pq_getmsgtext(buf, buf->len - buf->cursor, &nbytes);

	PG_RETURN_DATUM(DirectFunctionCall1(cdp_identifier_in, CStringGetDatum(s)));
}

PG_FUNCTION_INFO_V1(cdp_identifier_send);

Datum
cdp_identifier_send(PG_FUNCTION_ARGS)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(cdp_identifier_out,
														PG_GETARG_DATUM(0)));
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendtext(&buf, s, strlen(s));
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

PG_FUNCTION_INFO_V1(cdp_identifier_make);

/* cdp.identifier(type, value) */
Datum
cdp_identifier_make(PG_FUNCTION_ARGS)
{
	text	   *type = PG_GETARG_TEXT_PP(0);
	text	   *value = PG_GETARG_TEXT_PP(1);
	CdpIdentifier *id = MakeOrThrow(VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type),
									VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value), NULL);

	PG_FREE_IF_COPY(type, 0);
	PG_FREE_IF_COPY(value, 1);
	PG_RETURN_POINTER(id);
}

PG_FUNCTION_INFO_V1(cdp_id_type);

Datum
cdp_id_type(PG_FUNCTION_ARGS)
{
	struct varlena *v = PG_GETARG_VARLENA_PP(0);
	const char *d = VARDATA_ANY(v);
	text	   *result = cstring_to_text_with_len(d + 1, (uint8) d[0]);

	PG_FREE_IF_COPY(v, 0);
	PG_RETURN_TEXT_P(result);
}

PG_FUNCTION_INFO_V1(cdp_id_value);

Datum
cdp_id_value(PG_FUNCTION_ARGS)
{
	struct varlena *v = PG_GETARG_VARLENA_PP(0);
	const char *d = VARDATA_ANY(v);
	int			tl = (uint8) d[0];
	text	   *result = cstring_to_text_with_len(d + 1 + tl, VARSIZE_ANY_EXHDR(v) - 1 - tl);

	PG_FREE_IF_COPY(v, 0);
	PG_RETURN_TEXT_P(result);
}

#define IDENTIFIER_CMP_FN(name, expr) \
PG_FUNCTION_INFO_V1(name); \
Datum \
name(PG_FUNCTION_ARGS) \
{ \
	int			c = CompareArgs(fcinfo); \
	PG_RETURN_BOOL(expr); \
}

IDENTIFIER_CMP_FN(cdp_identifier_eq, c == 0)
IDENTIFIER_CMP_FN(cdp_identifier_ne, c != 0)
IDENTIFIER_CMP_FN(cdp_identifier_lt, c < 0)
IDENTIFIER_CMP_FN(cdp_identifier_le, c <= 0)
IDENTIFIER_CMP_FN(cdp_identifier_gt, c > 0)
IDENTIFIER_CMP_FN(cdp_identifier_ge, c >= 0)

PG_FUNCTION_INFO_V1(cdp_identifier_cmp);

Datum
cdp_identifier_cmp(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(CompareArgs(fcinfo));
}

PG_FUNCTION_INFO_V1(cdp_identifier_hash);

Datum
cdp_identifier_hash(PG_FUNCTION_ARGS)
{
	struct varlena *v = PG_GETARG_VARLENA_PP(0);
	Datum		h;

	/* the bytes after the header: type_len, type, value, as always hashed */
	h = hash_any((unsigned char *) VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v));
	PG_FREE_IF_COPY(v, 0);
	return h;
}

PG_FUNCTION_INFO_V1(cdp_identifier_hash_extended);

Datum
cdp_identifier_hash_extended(PG_FUNCTION_ARGS)
{
	struct varlena *v = PG_GETARG_VARLENA_PP(0);
	Datum		h;

	h = hash_any_extended((unsigned char *) VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v),
						  PG_GETARG_INT64(1));
	PG_FREE_IF_COPY(v, 0);
	return h;
}
