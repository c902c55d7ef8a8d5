/*
 * http_profiles.c
 *	  The profile API's database part: GET /v1/profiles/{identifier}/traits
 *	  and /audiences, answered with what cdp.profile_api_traits and
 *	  cdp.profile_api_audiences say for the read key's purpose.  A person
 *	  unknown, forgotten, or who did not grant the purpose gets the same 404,
 *	  so a read key never learns who exists.  The requests of a pass run in
 *	  a read-only transaction of their own (http_commit.c), never in the
 *	  group commit's round: a read waits for no WAL flush.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "identifier.h"
#include "http_server.h"
#include "spi_util.h"

/* the longest text a read key can be: longer ones are not looked up */
#define READ_KEY_MAX_BYTES	128

/*
 * The purpose of an enabled read key, or NULL.  Looked up on every
 * request, so a key rotated or disabled stops working at once.  Only the
 * read keys' table is asked: a write key is no read key.  Text no key can
 * be (too long, not printable ASCII) is not looked up.
 */
static char *
PurposeOfReadKey(const char *key)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];

	if (strlen(key) > READ_KEY_MAX_BYTES || !CdpHttpKeyIsPrintable(key))
		return NULL;
	args[0] = CStringGetTextDatum(key);
	if (CdpExecPlan(CdpPlan(&plan, "SELECT purpose FROM cdp.read_key_records"
							" WHERE key_hash = sha256(convert_to($1, 'UTF8'))"
							" AND disabled_at IS NULL", 1, argtypes),
					args, NULL, SPI_OK_SELECT) != 1)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* the route's answer for the profile holding id, or NULL when none is visible */
static char *
ProfileAnswer(CdpHttpRoute route, const char *id, const char *purpose)
{
	static SPIPlanPtr traits_plan = NULL;
	static SPIPlanPtr audiences_plan = NULL;
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		args[2];
	SPIPlanPtr	plan;

	if (route == CDP_ROUTE_PROFILE_TRAITS)
		plan = CdpPlan(&traits_plan,
					   "SELECT cdp.profile_api_traits(cdp.resolve($1::cdp.identifier), $2)::text",
					   2, argtypes);
	else
		plan = CdpPlan(&audiences_plan,
					   "SELECT cdp.profile_api_audiences(cdp.resolve($1::cdp.identifier), $2)::text",
					   2, argtypes);
	args[0] = CStringGetTextDatum(id);
	args[1] = CStringGetTextDatum(purpose);
	(void) CdpExecPlan(plan, args, NULL, SPI_OK_SELECT);
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Answer one profile request (arg: its CdpHttpHeld): 401 without a known,
 * enabled read key, then 400 for an identifier that cannot be one, 404
 * when no profile is visible, else 200 with the answer.  The caller is
 * connected to SPI, in a transaction.
 */
void
CdpHttpServeProfile(void *arg)
{
	CdpHttpHeld *req = arg;
	CdpHttpProfileAsk ask;
	char	   *purpose;
	char	   *colon;
	CdpIdentifier *id;
	const char *problem = NULL;
	char	   *answer;

	CdpHttpProfileRequest(req->url, req->authorization, &ask);
	if (ask.status != 0)
	{
		CdpHttpAnswer(req, ask.status, ask.error, ask.message);
		return;
	}
	purpose = PurposeOfReadKey(ask.read_key);
	if (purpose == NULL)
	{
		CdpHttpAnswer(req, 401, "unauthorized", "unknown or disabled read key");
		return;
	}
	if (ask.identifier == NULL)
	{
		CdpHttpAnswer(req, 400, "invalid_identifier", ask.id_message);
		return;
	}
	colon = strchr(ask.identifier, ':');
	id = CdpMakeIdentifier(ask.identifier, colon - ask.identifier, colon + 1, strlen(colon + 1),
						   &problem);
	if (id == NULL)
	{
		CdpHttpAnswer(req, 400, "invalid_identifier",
					  psprintf("the identifier is not valid: %s", problem));
		return;
	}
	answer = ProfileAnswer(req->route, CdpIdentifierToCString(id), purpose);
	if (answer == NULL)
	{
		CdpHttpAnswer(req, 404, "not_found", "no profile with this identifier is visible to this read key");
		return;
	}
	CdpHttpAnswerText(req, 200, answer, false);
}
