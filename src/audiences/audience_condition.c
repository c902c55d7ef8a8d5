/*
 * audience_condition.c
 *	  An audience's condition: a boolean SQL expression over trait names and
 *	  in_audience('other').  It is evaluated inside ingest, so it may only
 *	  be an expression over the profile's row: no subquery, no parameter, no
 *	  qualified name, and only functions that read their arguments.  The
 *	  parser says what it names (traits, audiences) and where its top-level
 *	  AND/OR terms are, for cdp.explain_membership.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "utils/array.h"
#include "utils/builtins.h"

#include "pg_cdp.h"

PG_FUNCTION_INFO_V1(cdp_audience_condition_info);

#define PREFIX "SELECT "

/* functions a condition may call: they only read their arguments */
static const char *const allowed_functions[] = {
	"abs", "age", "ceil", "ceiling", "char_length", "date_part", "date_trunc", "extract",
	"floor", "jsonb_array_length", "jsonb_typeof", "length", "lower", "now", "round",
	"trunc", "upper", "in_audience"
};

typedef struct ConditionInfo
{
	List	   *traits;			/* names read (String) */
	List	   *audiences;		/* in_audience() arguments (String) */
} ConditionInfo;

static void
Refuse(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("an audience condition may not contain %s", what),
			 errhint("A condition is a boolean expression over trait names, constants, operators, "
					 "simple functions (lower, length, round, now, ...) and in_audience('name').")));
}

static bool
FunctionAllowed(const char *name)
{
	for (int i = 0; i < lengthof(allowed_functions); i++)
		if (strcmp(name, allowed_functions[i]) == 0)
			return true;
	return false;
}

static void
AddName(List **list, const char *name)
{
	ListCell   *lc;

	foreach(lc, *list)
		if (strcmp(strVal(lfirst(lc)), name) == 0)
			return;
	*list = lappend(*list, makeString(pstrdup(name)));
}

static bool
CheckNode(Node *node, ConditionInfo *info)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_SubLink:
			Refuse("a subquery");
			break;
		case T_ParamRef:
			Refuse("a parameter");
			break;
		case T_ColumnRef:
			{
				ColumnRef  *c = (ColumnRef *) node;

				if (list_length(c->fields) != 1 || !IsA(linitial(c->fields), String))
					Refuse("a qualified name or *");
				AddName(&info->traits, strVal(linitial(c->fields)));
				return false;
			}
		case T_FuncCall:
			{
				FuncCall   *f = (FuncCall *) node;
				const char *name;

				if (list_length(f->funcname) != 1)
					Refuse("a schema-qualified function");
				name = strVal(linitial(f->funcname));
				if (!FunctionAllowed(name))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("an audience condition may not call %s()", name),
							 errhint("Allowed: lower, upper, length, char_length, abs, round, floor, ceil, trunc, now, age, date_trunc, extract, date_part, jsonb_typeof, jsonb_array_length and in_audience.")));
				if (f->agg_order != NIL || f->agg_filter != NULL || f->over != NULL ||
					f->agg_star || f->agg_distinct || f->func_variadic)
					Refuse("an aggregate or window call");
				if (strcmp(name, "in_audience") == 0)
				{
					A_Const    *arg = list_length(f->args) == 1 ? linitial(f->args) : NULL;

					if (arg == NULL || !IsA(arg, A_Const) || arg->isnull || !IsA(&arg->val, String))
						ereport(ERROR,
								(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
								 errmsg("in_audience() takes one audience name as a string constant")));
					AddName(&info->audiences, strVal(&arg->val));
					return false;
				}
				break;
			}
		case T_A_Expr:
			if (list_length(((A_Expr *) node)->name) > 1)
				Refuse("a schema-qualified operator");
			break;
		case T_TypeCast:
		case T_CollateClause:
		case T_A_Const:
		case T_BoolExpr:
		case T_NullTest:
		case T_BooleanTest:
		case T_CaseExpr:
		case T_CaseWhen:
		case T_CoalesceExpr:
		case T_MinMaxExpr:
		case T_A_ArrayExpr:
		case T_A_Indirection:
		case T_A_Indices:
		case T_SQLValueFunction:
		case T_TypeName:
		case T_RowExpr:
		case T_List:
		case T_String:
		case T_Integer:
		case T_Float:
		case T_Boolean:
			break;
		default:
			Refuse("this construct");
	}
	return raw_expression_tree_walker(node, CheckNode, (void *) info);
}

/* the condition's expression, parsed alone: anything else in it is refused */
static Node *
ParseCondition(const char *condition, char **text)
{
	List	   *stmts;
	SelectStmt *s;
	ResTarget  *target;

	*text = psprintf(PREFIX "%s\n", condition);
	stmts = raw_parser(*text, RAW_PARSE_DEFAULT);
	if (list_length(stmts) != 1 || !IsA(((RawStmt *) linitial(stmts))->stmt, SelectStmt))
		Refuse("more than one expression");
	s = (SelectStmt *) ((RawStmt *) linitial(stmts))->stmt;
	if (list_length(s->targetList) != 1 || s->fromClause != NIL || s->whereClause != NULL ||
		s->groupClause != NIL || s->havingClause != NULL || s->windowClause != NIL ||
		s->sortClause != NIL || s->limitCount != NULL || s->limitOffset != NULL ||
		s->lockingClause != NIL || s->withClause != NULL || s->distinctClause != NIL ||
		s->valuesLists != NIL || s->op != SETOP_NONE || s->intoClause != NULL)
		Refuse("anything but one expression");
	target = linitial(s->targetList);
	if (target->name != NULL)
		Refuse("an alias");
	return target->val;
}

/* the text of a top-level term: from its leftmost token to the next term */
static char *
TermText(const char *text, int start, int end)
{
	int			depth = 0;

	while (end > start && (isspace((unsigned char) text[end - 1])))
		end--;
	/* the keyword joining it to the next term */
	if (end - start > 4 && pg_strncasecmp(text + end - 3, "AND", 3) == 0 &&
		isspace((unsigned char) text[end - 4]))
		end -= 4;
	else if (end - start > 3 && pg_strncasecmp(text + end - 2, "OR", 2) == 0 &&
			 isspace((unsigned char) text[end - 3]))
		end -= 3;
	while (end > start && isspace((unsigned char) text[end - 1]))
		end--;
	/* parentheses its leftmost token is inside: a term "(a OR b)" starts at a */
	for (int i = start; i < end; i++)
		depth += text[i] == '(' ? 1 : (text[i] == ')' ? -1 : 0);
	while (depth < 0 && start > (int) strlen(PREFIX))
	{
		start--;
		if (text[start] == '(')
			depth++;
	}
	return pnstrdup(text + start, end - start);
}

/*
 * audience_condition_info(condition) → (traits text[], audiences text[],
 * parts text[]): the trait names it reads, the audiences it names, and its
 * top-level AND/OR terms (the whole condition when it has none).  Raises
 * 42601 for a syntax error and 22023 for anything a condition may not hold.
 */
Datum
cdp_audience_condition_info(PG_FUNCTION_ARGS)
{
	char	   *condition = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *text;
	Node	   *expr = ParseCondition(condition, &text);
	ConditionInfo info = {NIL, NIL};
	List	   *parts = NIL;
	TupleDesc	desc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	List	   *lists[3];

	(void) CheckNode(expr, &info);
	if (IsA(expr, BoolExpr) && ((BoolExpr *) expr)->boolop != NOT_EXPR)
	{
		List	   *args = ((BoolExpr *) expr)->args;

		for (int i = 0; i < list_length(args); i++)
		{
			int			start = exprLocation(list_nth(args, i));
			int			end = i + 1 < list_length(args) ? exprLocation(list_nth(args, i + 1)) : strlen(text);

			parts = lappend(parts, makeString(TermText(text, start, end)));
		}
	}
	else
		parts = list_make1(makeString(pstrdup(condition)));

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "audience_condition_info must return a record");
	lists[0] = info.traits;
	lists[1] = info.audiences;
	lists[2] = parts;
	for (int k = 0; k < 3; k++)
	{
		Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(lists[k]), 1));
		int			n = 0;
		ListCell   *lc;

		foreach(lc, lists[k])
			elems[n++] = CStringGetTextDatum(strVal(lfirst(lc)));
		values[k] = PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
