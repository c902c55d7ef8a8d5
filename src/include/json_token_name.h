/*
 * json_token_name.h
 *	  Naming a JSON value's kind in error messages.
 */
#ifndef CDP_JSON_TOKEN_NAME_H
#define CDP_JSON_TOKEN_NAME_H

#include "common/jsonapi.h"

extern const char *CdpJsonTokenName(JsonTokenType type);

#endif							/* CDP_JSON_TOKEN_NAME_H */
