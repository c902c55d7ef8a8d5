/*
 * json_token_name.c
 *	  How an error message names a JSON value's kind ("an object", "a
 *	  number"...).  Frontend-safe: the HTTP request code, which the fuzzer
 *	  builds without a server, and the pipeline's validation share it.
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include "json_token_name.h"

const char *
CdpJsonTokenName(JsonTokenType type)
{
	switch (type)
	{
		case JSON_TOKEN_OBJECT_START:
			return "an object";
		case JSON_TOKEN_ARRAY_START:
			return "an array";
		case JSON_TOKEN_STRING:
			return "a string";
		case JSON_TOKEN_NUMBER:
			return "a number";
		case JSON_TOKEN_TRUE:
		case JSON_TOKEN_FALSE:
			return "a boolean";
		default:
			return "null";
	}
}
