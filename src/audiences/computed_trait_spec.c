/*
 * computed_trait_spec.c
 *	  What a computed trait reads of an event: the kind, the property path
 *	  and the filter, parsed and checked once, and evaluated against an
 *	  event's properties (the jsonb cdp.events stores) the same way at
 *	  ingest, in a backfill and in a recompute.
 *
 *	  A filter is an object of conditions on properties, all of which must
 *	  hold: {"plan": "pro"} (equal), {"price": {"gte": 10, "lt": 100}},
 *	  {"plan": {"in": ["pro", "team"]}}, {"coupon": {"exists": true}},
 *	  {"plan": {"ne": "free"}}.  Keys are property paths, dotted for nested
 *	  objects.  Numbers compare as numbers, strings as text (byte order);
 *	  a comparison with a property of another type, or missing, is false.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "computed_traits.h"

typedef enum CondOp
{
	OP_EQ,
	OP_NE,
	OP_GT,
	OP_GTE,
	OP_LT,
	OP_LTE,
	OP_IN,
	OP_EXISTS
} CondOp;

typedef struct Condition
{
	int			npath;
	char	  **path;
	CondOp		op;
	JsonbValue	operand;		/* a scalar; OP_IN: jbvArray of scalars; OP_EXISTS: bool */
} Condition;

static const char *const kind_names[] = {
	"count", "sum", "avg", "min", "max", "first", "last",
	"most_frequent", "unique_count", "unique_list"
};

static const struct
{
	const char *name;
	CondOp		op;
}			op_names[] = {
	{"eq", OP_EQ}, {"ne", OP_NE}, {"gt", OP_GT}, {"gte", OP_GTE},
	{"lt", OP_LT}, {"lte", OP_LTE}, {"in", OP_IN}, {"exists", OP_EXISTS}
};

/* the kind named, or an error listing the kinds */
CdpTraitKind
CdpTraitKindOf(const char *kind)
{
	for (int i = 0; i < lengthof(kind_names); i++)
		if (kind != NULL && strcmp(kind, kind_names[i]) == 0)
			return (CdpTraitKind) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown computed trait kind \"%s\"", kind ? kind : "(null)"),
			 errhint("Kinds: count, sum, avg, min, max, first, last, most_frequent, unique_count, unique_list.")));
	return CDP_TRAIT_COUNT;		/* keep the compiler quiet */
}

/* "a.b.c" as its keys; an empty key is refused */
static char **
ParsePath(const char *text, int *n, const char *what)
{
	char	  **keys = palloc(sizeof(char *) * (strlen(text) / 2 + 1));
	const char *p = text;

	*n = 0;
	for (;;)
	{
		const char *dot = strchr(p, '.');
		int			len = dot ? dot - p : strlen(p);

		if (len == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid %s \"%s\": empty key", what, text),
					 errhint("A property path is keys joined by dots, e.g. \"product.price\".")));
		keys[(*n)++] = pnstrdup(p, len);
		if (dot == NULL)
			break;
		p = dot + 1;
	}
	return keys;
}

static bool
IsScalar(const JsonbValue *v)
{
	return v->type == jbvString || v->type == jbvNumeric || v->type == jbvBool;
}

/* the value of key in an object container, as a scalar or jbvBinary */
static bool
ObjectKey(JsonbContainer *obj, const char *key, JsonbValue *out)
{
	return getKeyJsonValueFromContainer(obj, key, strlen(key), out) != NULL;
}

/* the elements of a jbvBinary array operand, checked to be scalars */
static JsonbValue
ArrayOperand(JsonbValue *v, const char *key)
{
	JsonbValue	arr;
	JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
	JsonbValue	elem;
	JsonbIteratorToken tok;
	List	   *elems = NIL;
	int			i = 0;
	ListCell   *lc;

	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		if (!IsScalar(&elem))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("filter on \"%s\": \"in\" takes an array of strings, numbers or booleans", key)));
		{
			JsonbValue *copy = palloc(sizeof(JsonbValue));

			*copy = elem;
			elems = lappend(elems, copy);
		}
	}
	arr.type = jbvArray;
	arr.val.array.nElems = list_length(elems);
	arr.val.array.rawScalar = false;
	arr.val.array.elems = palloc(sizeof(JsonbValue) * Max(list_length(elems), 1));
	foreach(lc, elems)
		arr.val.array.elems[i++] = *(JsonbValue *) lfirst(lc);
	return arr;
}

static Condition *
NewCondition(const char *key, CondOp op, JsonbValue *operand)
{
	Condition  *c = palloc0(sizeof(Condition));

	c->path = ParsePath(key, &c->npath, "filter key");
	c->op = op;
	if (op == OP_IN)
	{
		if (operand->type != jbvBinary || !JsonContainerIsArray(operand->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("filter on \"%s\": \"in\" takes an array", key)));
		c->operand = ArrayOperand(operand, key);
	}
	else if (op == OP_EXISTS)
	{
		if (operand->type != jbvBool)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("filter on \"%s\": \"exists\" takes true or false", key)));
		c->operand = *operand;
	}
	else
	{
		if (!IsScalar(operand) ||
			(op != OP_EQ && op != OP_NE && operand->type == jbvBool))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("filter on \"%s\": \"%s\" takes %s", key, op_names[op].name,
							(op == OP_EQ || op == OP_NE) ? "a string, a number or a boolean"
							: "a string or a number")));
		c->operand = *operand;
	}
	return c;
}

/* {"key": scalar} or {"key": {"op": operand, ...}} */
static List *
ParseFilter(Jsonb *filter)
{
	List	   *conds = NIL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	if (filter == NULL)
		return NIL;
	if (!JB_ROOT_IS_OBJECT(filter))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a computed trait's filter must be a JSON object"),
				 errhint("For example {\"plan\": \"pro\", \"price\": {\"gte\": 10}}.")));
	it = JsonbIteratorInit(&filter->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE)
			continue;
		if (v.type == jbvBinary && JsonContainerIsObject(v.val.binary.data))
		{
			JsonbIterator *ops = JsonbIteratorInit(v.val.binary.data);
			JsonbValue	ov;
			JsonbIteratorToken otok;
			char	   *opname = NULL;
			int			nops = 0;

			while ((otok = JsonbIteratorNext(&ops, &ov, true)) != WJB_DONE)
			{
				int			k;

				if (otok == WJB_KEY)
				{
					opname = pnstrdup(ov.val.string.val, ov.val.string.len);
					continue;
				}
				if (otok != WJB_VALUE)
					continue;
				for (k = 0; k < lengthof(op_names); k++)
					if (strcmp(opname, op_names[k].name) == 0)
						break;
				if (k == lengthof(op_names))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("filter on \"%s\": unknown operator \"%s\"", key, opname),
							 errhint("Operators: eq, ne, gt, gte, lt, lte, in, exists.")));
				conds = lappend(conds, NewCondition(key, op_names[k].op, &ov));
				nops++;
			}
			if (nops == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("filter on \"%s\": an empty object has no condition", key)));
		}
		else if (v.type == jbvNull)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("filter on \"%s\": null matches nothing", key),
					 errhint("Use {\"%s\": {\"exists\": false}} for a missing property.", key)));
		else
			conds = lappend(conds, NewCondition(key, OP_EQ, &v));
	}
	return conds;
}

/*
 * Parse and check a trait's kind, property and filter: errors name what is
 * wrong.  Kinds other than count need a property.
 */
CdpTraitSpec *
CdpParseTraitSpec(const char *kind, const char *property, Jsonb *filter)
{
	CdpTraitSpec *spec = palloc0(sizeof(CdpTraitSpec));

	spec->kind = CdpTraitKindOf(kind);
	if (property != NULL)
		spec->path = ParsePath(property, &spec->npath, "property");
	else if (spec->kind != CDP_TRAIT_COUNT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a computed trait of kind %s needs a property", kind),
				 errhint("Name the event property it reads, e.g. property => 'price'.")));
	spec->conditions = ParseFilter(filter);
	spec->keep_oldest = true;
	return spec;
}

/* the value at path in properties; false when missing or null */
static bool
PathValue(Jsonb *properties, char **path, int npath, JsonbValue *out)
{
	JsonbContainer *c;

	if (properties == NULL || !JB_ROOT_IS_OBJECT(properties))
		return false;
	c = &properties->root;
	for (int i = 0; i < npath; i++)
	{
		if (!ObjectKey(c, path[i], out))
			return false;
		if (i + 1 < npath)
		{
			if (out->type != jbvBinary || !JsonContainerIsObject(out->val.binary.data))
				return false;
			c = out->val.binary.data;
		}
	}
	return out->type != jbvNull;
}

/* <0, 0, >0; false when the two cannot be compared */
static bool
CompareScalars(const JsonbValue *a, const JsonbValue *b, int *cmp)
{
	if (a->type != b->type)
		return false;
	switch (a->type)
	{
		case jbvNumeric:
			*cmp = DatumGetInt32(DirectFunctionCall2(numeric_cmp,
													 NumericGetDatum(a->val.numeric),
													 NumericGetDatum(b->val.numeric)));
			return true;
		case jbvString:
			{
				int			len = Min(a->val.string.len, b->val.string.len);

				*cmp = memcmp(a->val.string.val, b->val.string.val, len);
				if (*cmp == 0)
					*cmp = a->val.string.len - b->val.string.len;
				return true;
			}
		case jbvBool:
			*cmp = (int) a->val.boolean - (int) b->val.boolean;
			return true;
		default:
			return false;
	}
}

static bool
ConditionHolds(const Condition *c, Jsonb *properties)
{
	JsonbValue	v;
	bool		present = PathValue(properties, c->path, c->npath, &v);
	int			cmp;

	if (c->op == OP_EXISTS)
		return present == c->operand.val.boolean;
	if (!present)
		return false;
	switch (c->op)
	{
		case OP_EQ:
			return CompareScalars(&v, &c->operand, &cmp) && cmp == 0;
		case OP_NE:
			return !CompareScalars(&v, &c->operand, &cmp) || cmp != 0;
		case OP_GT:
			return CompareScalars(&v, &c->operand, &cmp) && cmp > 0;
		case OP_GTE:
			return CompareScalars(&v, &c->operand, &cmp) && cmp >= 0;
		case OP_LT:
			return CompareScalars(&v, &c->operand, &cmp) && cmp < 0;
		case OP_LTE:
			return CompareScalars(&v, &c->operand, &cmp) && cmp <= 0;
		case OP_IN:
			for (int i = 0; i < c->operand.val.array.nElems; i++)
				if (CompareScalars(&v, &c->operand.val.array.elems[i], &cmp) && cmp == 0)
					return true;
			return false;
		case OP_EXISTS:
			break;
	}
	return false;
}

/* whether an event's properties pass the filter */
bool
CdpTraitFilterMatches(const CdpTraitSpec *spec, Jsonb *properties)
{
	ListCell   *lc;

	foreach(lc, spec->conditions)
		if (!ConditionHolds(lfirst(lc), properties))
			return false;
	return true;
}

/* the property's value, when the event has one (not null) */
bool
CdpTraitPropertyValue(const CdpTraitSpec *spec, Jsonb *properties, JsonbValue *out)
{
	return PathValue(properties, spec->path, spec->npath, out);
}
