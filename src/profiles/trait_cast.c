/*
 * trait_cast.c
 *	  cdp.trait_as(jsonb, anyelement): a trait's stored JSON value as the SQL
 *	  type its definition declares, or NULL when it does not convert.  Profile
 *	  views call it for every trait column: traits come from writers, and one
 *	  bad value must never make a dashboard's query fail.  PostgreSQL 15 has no
 *	  soft input errors, so common types convert here without raising, and
 *	  every other type goes through its input function in a subtransaction.
 *	  cdp.trait_json does the same for the profile API, giving the value back
 *	  as the JSON of its type.
 */
#include "postgres.h"

#include <errno.h>
#include <float.h>
#include <math.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/float.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"

/* what a call site converts to, looked up once per call site */
typedef struct TraitTarget
{
	Oid			typid;
	Oid			typioparam;
	FmgrInfo	input;
} TraitTarget;

/*
 * The text a type's input function gets for a JSON value: a string as is,
 * a number or boolean as written, an object or array as JSON text.
 */
static char *
JsonbValueText(Jsonb *jb, JsonbValue *scalar, bool is_scalar)
{
	if (!is_scalar)
		return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	switch (scalar->type)
	{
		case jbvString:
			return pnstrdup(scalar->val.string.val, scalar->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(scalar->val.numeric)));
		case jbvBool:
			return pstrdup(scalar->val.boolean ? "true" : "false");
		default:
			return NULL;
	}
}

/*
 * An integer from decimal text "-?[0-9]+" within [min, max]; false for
 * anything else (the caller then tries the type's own input function).
 */
static bool
ParseInteger(const char *s, int64 min, int64 max, int64 *result)
{
	const char *p = s;
	char	   *end;
	long long	v;

	if (*p == '-')
		p++;
	if (*p < '0' || *p > '9' || strlen(p) > 19)
		return false;
	for (const char *q = p; *q; q++)
		if (*q < '0' || *q > '9')
			return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*result = (int64) v;
	return true;
}

/*
 * The type's input function applied to text inside a subtransaction: an
 * error of class 22 (data exception), 23 (a domain's constraint) or a
 * syntax error (42601: what tsvector, tsquery and jsonpath input raise for
 * text they cannot parse) means "does not convert" and gives NULL; any
 * other error (cancel, out of memory) is raised as it was.
 */
static Datum
InputOrNull(TraitTarget *target, char *text, bool *isnull)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile Datum result = (Datum) 0;

	*isnull = false;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		result = InputFunctionCall(&target->input, text, target->typioparam, -1);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int			category;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);
		if (category != ERRCODE_DATA_EXCEPTION &&
			category != ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION &&
			edata->sqlerrcode != ERRCODE_SYNTAX_ERROR)
			ReThrowError(edata);
		FreeErrorData(edata);
		*isnull = true;
	}
	PG_END_TRY();
	return result;
}

/*
 * Fast paths: conversions decided here without raising.  Returns true when
 * the answer is known (*isnull says whether it is NULL), false when the
 * type's input function must decide.
 */
static bool
ConvertDirectly(Oid typid, Jsonb *jb, JsonbValue *v, bool is_scalar,
				Datum *result, bool *isnull)
{
	*isnull = false;
	switch (typid)
	{
		case JSONBOID:
			*result = JsonbPGetDatum(jb);
			return true;
		case JSONOID:
		case TEXTOID:
		case VARCHAROID:
			if (typid != JSONOID && is_scalar && v->type == jbvString)
				*result = PointerGetDatum(cstring_to_text_with_len(v->val.string.val,
																   v->val.string.len));
			else if (typid == JSONOID)
				*result = PointerGetDatum(cstring_to_text(JsonbToCString(NULL, &jb->root,
																		 VARSIZE(jb))));
			else
				*result = PointerGetDatum(cstring_to_text(JsonbValueText(jb, v, is_scalar)));
			return true;
		case BOOLOID:
			if (is_scalar && v->type == jbvBool)
				*result = BoolGetDatum(v->val.boolean);
			else
			{
				char	   *s = is_scalar ? JsonbValueText(jb, v, true) : NULL;
				bool		b;

				/* boolin's own parser, which never raises */
				if (s == NULL || !parse_bool_with_len(s, strlen(s), &b))
					*isnull = true;
				else
					*result = BoolGetDatum(b);
			}
			return true;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			{
				int64		min = typid == INT2OID ? PG_INT16_MIN : typid == INT4OID ? PG_INT32_MIN : PG_INT64_MIN;
				int64		max = typid == INT2OID ? PG_INT16_MAX : typid == INT4OID ? PG_INT32_MAX : PG_INT64_MAX;
				int64		i;
				char	   *s;

				if (!is_scalar || (v->type != jbvNumeric && v->type != jbvString))
				{
					*isnull = true;
					return true;
				}
				if (v->type == jbvNumeric)
				{
					/* a JSON number rounds, as the jsonb casts do */
					Datum		rounded = DirectFunctionCall2(numeric_round,
															  NumericGetDatum(v->val.numeric),
															  Int32GetDatum(0));

					s = DatumGetCString(DirectFunctionCall1(numeric_out, rounded));
					if (!ParseInteger(s, min, max, &i))
					{
						*isnull = true;
						return true;
					}
				}
				else
				{
					s = pnstrdup(v->val.string.val, v->val.string.len);
					if (!ParseInteger(s, min, max, &i))
						return false;	/* " 42", "+7": the input function */
				}
				*result = typid == INT2OID ? Int16GetDatum((int16) i)
					: typid == INT4OID ? Int32GetDatum((int32) i) : Int64GetDatum(i);
				return true;
			}
		case NUMERICOID:
			if (is_scalar && v->type == jbvNumeric)
			{
				*result = NumericGetDatum(v->val.numeric);
				return true;
			}
			return false;
		case FLOAT4OID:
		case FLOAT8OID:
			{
				char	   *s = is_scalar ? JsonbValueText(jb, v, true) : NULL;
				bool		error = false;
				float8		f;

				if (s == NULL || (v->type != jbvNumeric && v->type != jbvString))
				{
					*isnull = true;
					return true;
				}
				f = float8in_internal_opt_error(s, NULL, "double precision", s, &error);
				/* out of real's range: real's input refuses it (denormals pass) */
				if (error || (typid == FLOAT4OID && !isinf(f) &&
							  (fabs(f) > FLT_MAX || (f != 0.0 && (float4) f == 0.0f))))
					*isnull = true;
				else if (typid == FLOAT4OID)
					*result = Float4GetDatum((float4) f);
				else
					*result = Float8GetDatum(f);
				return true;
			}
		case TIMESTAMPTZOID:
			if (is_scalar && v->type == jbvString)
			{
				TimestampTz ts;

				/* the strict ISO 8601 events use; anything else: the input function */
				if (CdpParseIsoTimestamp(v->val.string.val, v->val.string.len, &ts))
				{
					*result = TimestampTzGetDatum(ts);
					return true;
				}
			}
			return false;
		default:
			return false;
	}
}

/* a conversion to typid, its input function looked up in cxt */
static void
InitTarget(TraitTarget *target, Oid typid, MemoryContext cxt)
{
	Oid			inputfn;

	target->typid = typid;
	getTypeInputInfo(typid, &inputfn, &target->typioparam);
	fmgr_info_cxt(inputfn, &target->input, cxt);
}

/* the call site's target type, looked up on its first call */
static TraitTarget *
GetTarget(FunctionCallInfo fcinfo, int template_arg)
{
	TraitTarget *target = (TraitTarget *) fcinfo->flinfo->fn_extra;

	if (target == NULL)
	{
		Oid			typid = get_fn_expr_argtype(fcinfo->flinfo, template_arg);

		if (!OidIsValid(typid))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("could not determine the type to convert the trait to")));
		target = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(TraitTarget));
		InitTarget(target, typid, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = target;
	}
	return target;
}

/*
 * Convert one JSON value (jb's root when v is NULL, else v, a value inside
 * jb) to the target type; false when it is null or does not convert.
 */
static bool
ConvertTrait(TraitTarget *target, Jsonb *jb, JsonbValue *inner, Datum *result)
{
	JsonbValue	v;
	bool		is_scalar;
	bool		isnull;

	if (inner != NULL && (inner->type == jbvBinary ||
						  target->typid == JSONBOID || target->typid == JSONOID))
	{
		/* an object or array inside, or a value kept as JSON: a jsonb of its own */
		jb = JsonbValueToJsonb(inner);
		inner = NULL;
	}
	if (inner != NULL)
	{
		v = *inner;
		is_scalar = true;
	}
	else
		is_scalar = JB_ROOT_IS_SCALAR(jb) && JsonbExtractScalar(&jb->root, &v);
	if (is_scalar && v.type == jbvNull)
		return false;
	if (ConvertDirectly(target->typid, jb, &v, is_scalar, result, &isnull))
		return !isnull;
	*result = InputOrNull(target, JsonbValueText(jb, &v, is_scalar), &isnull);
	return !isnull;
}

PG_FUNCTION_INFO_V1(cdp_trait_as);

/*
 * cdp.trait_as(value jsonb, template anyelement) → anyelement: value as the
 * template's type (only its type matters), NULL when value is NULL, JSON
 * null, or does not convert.
 */
Datum
cdp_trait_as(PG_FUNCTION_ARGS)
{
	TraitTarget *target = GetTarget(fcinfo, 1);
	Datum		result;

	if (PG_ARGISNULL(0) || !ConvertTrait(target, PG_GETARG_JSONB_P(0), NULL, &result))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/* traits->key found in place, or NULL when traits is no object or lacks it */
static JsonbValue *
FindTrait(Jsonb *traits, text *key)
{
	JsonbValue	k;

	if (!JB_ROOT_IS_OBJECT(traits))
		return NULL;
	k.type = jbvString;
	k.val.string.val = VARDATA_ANY(key);
	k.val.string.len = VARSIZE_ANY_EXHDR(key);
	return findJsonbValueFromContainer(&traits->root, JB_FOBJECT, &k);
}

PG_FUNCTION_INFO_V1(cdp_trait_of);

/*
 * cdp.trait_as(traits jsonb, key text, template anyelement) → anyelement:
 * traits->key as the template's type, found in place (what profile views
 * call for every trait column: no jsonb copy of the value).
 */
Datum
cdp_trait_of(PG_FUNCTION_ARGS)
{
	TraitTarget *target = GetTarget(fcinfo, 2);
	Jsonb	   *traits;
	JsonbValue *v;
	Datum		result;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	traits = PG_GETARG_JSONB_P(0);
	v = FindTrait(traits, PG_GETARG_TEXT_PP(1));
	if (v == NULL || !ConvertTrait(target, traits, v, &result))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/* a conversion to one type and back to JSON, for cdp.trait_json */
typedef struct JsonTarget
{
	TraitTarget target;
	FmgrInfo	to_jsonb;		/* to_jsonb(anyelement), told the type */
} JsonTarget;

/* the call site's conversions so far, one per type met */
typedef struct JsonTargets
{
	int			n;
	int			cap;
	JsonTarget *items;
} JsonTargets;

/*
 * The conversion to typid, made on first need.  to_jsonb reads its
 * argument's type from its call expression, so it is given one: a NULL of
 * typid as the argument.
 */
static JsonTarget *
GetJsonTarget(FunctionCallInfo fcinfo, Oid typid)
{
	MemoryContext cxt = fcinfo->flinfo->fn_mcxt;
	JsonTargets *all = (JsonTargets *) fcinfo->flinfo->fn_extra;
	JsonTarget *t;
	MemoryContext old;

	if (all == NULL)
	{
		all = MemoryContextAllocZero(cxt, sizeof(JsonTargets));
		all->cap = 8;
		all->items = MemoryContextAllocZero(cxt, all->cap * sizeof(JsonTarget));
		fcinfo->flinfo->fn_extra = all;
	}
	for (int i = 0; i < all->n; i++)
		if (all->items[i].target.typid == typid)
			return &all->items[i];
	if (get_typtype(typid) == TYPTYPE_PSEUDO || !get_typisdefined(typid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a trait cannot be converted to type %s", format_type_be(typid))));
	if (all->n == all->cap)
	{
		all->cap *= 2;
		all->items = repalloc(all->items, all->cap * sizeof(JsonTarget));
	}
	t = &all->items[all->n++];
	InitTarget(&t->target, typid, cxt);
	fmgr_info_cxt(F_TO_JSONB, &t->to_jsonb, cxt);
	old = MemoryContextSwitchTo(cxt);
	fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
											 list_make1(makeNullConst(typid, -1, InvalidOid)),
											 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL),
					   &t->to_jsonb);
	MemoryContextSwitchTo(old);
	return t;
}

PG_FUNCTION_INFO_V1(cdp_trait_json);

/*
 * cdp.trait_json(traits jsonb, key text, type regtype) → jsonb: what a
 * profile view's column of that type shows of traits->key, as JSON (the
 * profile API's answer); NULL when absent or it does not convert.
 */
Datum
cdp_trait_json(PG_FUNCTION_ARGS)
{
	Jsonb	   *traits = PG_GETARG_JSONB_P(0);
	JsonbValue *v = FindTrait(traits, PG_GETARG_TEXT_PP(1));
	JsonTarget *t;
	Datum		result;

	if (v == NULL)
		PG_RETURN_NULL();
	t = GetJsonTarget(fcinfo, PG_GETARG_OID(2));
	if (!ConvertTrait(&t->target, traits, v, &result))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(FunctionCall1(&t->to_jsonb, result));
}
