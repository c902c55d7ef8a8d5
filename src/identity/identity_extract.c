/*
 * identity_extract.c
 *	  Which identifiers a message carries (identity.md "Our model"): userId,
 *	  anonymousId, email and phone from an identify call's traits or from
 *	  context.traits (never a group call's traits: they describe the group),
 *	  context.device.id, every context.externalIds entry, and an alias's
 *	  previousId.  Always in this order, which the algorithm's tie-breaks
 *	  and rebuilds rely on.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "pg_cdp.h"
#include "identity.h"

typedef struct Extraction
{
	List	   *ids;			/* CdpIdentifier * */
	List	   *invalid;		/* char *: what was wrong, for a violation */
} Extraction;

static void
Add(Extraction *x, const char *type, const char *value, int value_len)
{
	const char *problem = NULL;
	CdpIdentifier *id;

	if (value == NULL)
		return;
	id = CdpMakeIdentifier(type, strlen(type), value, value_len, &problem);
	if (id == NULL)
	{
		x->invalid = lappend(x->invalid,
							 psprintf("%s:%.*s: %s", type,
									  pg_mbcliplen(value, value_len, 64), value, problem));
		return;
	}
	for (ListCell *lc = list_head(x->ids); lc; lc = lnext(x->ids, lc))
		if (CdpIdentifierCompare(lfirst(lc), id) == 0)
			return;
	x->ids = lappend(x->ids, id);
}

/* a string or number value of obj[key], or NULL */
static const char *
ScalarText(JsonbValue *obj, const char *key, int *len)
{
	JsonbValue *v;

	if (obj == NULL || obj->type != jbvObject)
		return NULL;
	v = CdpJsonbObjectGet(obj, key);
	if (v == NULL)
		return NULL;
	if (v->type == jbvString && v->val.string.len > 0)
	{
		*len = v->val.string.len;
		return v->val.string.val;
	}
	if (v->type == jbvNumeric)
	{
		char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
															NumericGetDatum(v->val.numeric)));

		*len = strlen(s);
		return s;
	}
	return NULL;
}

static void
AddFrom(Extraction *x, const char *type, JsonbValue *obj, const char *key)
{
	int			len = 0;
	const char *value = ScalarText(obj, key, &len);

	if (value != NULL)
		Add(x, type, value, len);
}

/* an externalIds type as an identifier type: lower case, [a-z0-9_] */
static char *
ExternalType(const char *type, int len)
{
	char	   *t = palloc(len + 2);
	int			n = 0;

	if (len > 0 && !(type[0] >= 'a' && type[0] <= 'z') && !(type[0] >= 'A' && type[0] <= 'Z'))
		t[n++] = 'x';
	for (int i = 0; i < len && n < CDP_ID_TYPE_MAX; i++)
	{
		char		c = pg_ascii_tolower((unsigned char) type[i]);

		t[n++] = ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) ? c : '_';
	}
	t[n] = '\0';
	return t;
}

/*
 * The identifiers of a validated message.  previous_id_type is "user_id" or
 * "anonymous_id": how an alias's previousId is read (the caller knows
 * whether such a user_id exists).
 */
List *
CdpMessageIdentifiers(CdpMessage *msg, const char *previous_id_type, List **invalid)
{
	Extraction	x = {NIL, NIL};
	JsonbValue *ctx_traits = NULL;
	JsonbValue *person = NULL;
	JsonbValue *device = NULL;
	JsonbValue *external = NULL;

	if (msg->context)
	{
		ctx_traits = CdpJsonbObjectGet(msg->context, "traits");
		device = CdpJsonbObjectGet(msg->context, "device");
		external = CdpJsonbObjectGet(msg->context, "externalIds");
	}

	/* a group call's traits are the company's: its email is not the visitor's */
	if (msg->type != NULL && strcmp(msg->type, "identify") == 0)
		person = msg->traits;

	if (msg->user_id)
		Add(&x, "user_id", msg->user_id, strlen(msg->user_id));
	if (msg->anonymous_id)
		Add(&x, "anonymous_id", msg->anonymous_id, strlen(msg->anonymous_id));
	AddFrom(&x, "email", person, "email");
	AddFrom(&x, "email", ctx_traits, "email");
	AddFrom(&x, "phone", person, "phone");
	AddFrom(&x, "phone", ctx_traits, "phone");
	AddFrom(&x, "device_id", device, "id");
	if (external != NULL && external->type == jbvArray)
	{
		for (int i = 0; i < external->val.array.nElems; i++)
		{
			JsonbValue *e = &external->val.array.elems[i];
			int			tlen = 0;
			const char *type = ScalarText(e, "type", &tlen);

			if (type != NULL)
				AddFrom(&x, ExternalType(type, tlen), e, "id");
		}
	}
	if (msg->previous_id)
		Add(&x, previous_id_type, msg->previous_id, strlen(msg->previous_id));
	*invalid = x.invalid;
	return x.ids;
}
