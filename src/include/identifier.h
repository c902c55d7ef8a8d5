/*
 * identifier.h
 *	  cdp.identifier: a typed, normalised identifier ("email:alice@x.io").
 */
#ifndef CDP_IDENTIFIER_H
#define CDP_IDENTIFIER_H

#include "fmgr.h"

#define CDP_ID_TYPE_MAX		63
#define CDP_ID_VALUE_MAX	1024

/*
 * On disk: varlena header, one byte of type length, the type, then the
 * value.  Ordering is by type, then value bytes: no collation involved, so
 * it is the same in every database.
 */
typedef struct CdpIdentifier
{
	int32		vl_len_;
	uint8		type_len;
	char		data[FLEXIBLE_ARRAY_MEMBER];
} CdpIdentifier;

#define IdTypePtr(id)		((id)->data)
#define IdValuePtr(id)		((id)->data + (id)->type_len)
#define IdValueLen(id)		(VARSIZE(id) - offsetof(CdpIdentifier, data) - (id)->type_len)

#define DatumGetIdentifierP(d)	((CdpIdentifier *) PG_DETOAST_DATUM(d))
#define PG_GETARG_IDENTIFIER_P(n) DatumGetIdentifierP(PG_GETARG_DATUM(n))

extern CdpIdentifier *CdpMakeIdentifier(const char *type, int type_len,
										const char *value, int value_len,
										const char **problem);
extern int	CdpIdentifierCompare(const CdpIdentifier *a, const CdpIdentifier *b);
extern char *CdpIdentifierToCString(const CdpIdentifier *id);

#endif
