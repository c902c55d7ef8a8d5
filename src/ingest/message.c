/*
 * message.c
 *	  Turning inbox rows into validated messages: what a row holds is found
 *	  first (one message, or a batch envelope's items by a scan of its text),
 *	  then each message is parsed on its own when its chunk is processed (an
 *	  envelope's context, integrations and sentAt apply to items that lack
 *	  them), checked against the Segment spec, and its event time corrected
 *	  for client clock skew.  A message that fails gets a stable error code
 *	  and a readable reason, and later a dead-letter row.
 */
#include "postgres.h"

#include "common/int.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "port.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "pg_cdp.h"
#include "json_token_name.h"

/* top-level fields that have a column of their own, or are never stored */
static const char *const mapped_fields[] = {
	"anonymousId", "context", "event", "groupId", "messageId", "name",
	"originalTimestamp", "previousId", "properties", "sentAt", "timestamp",
	"traits", "type", "userId", "writeKey"
};

/* a too large envelope item up to this size is dead-lettered as merged */
#define TOO_LARGE_PARSE_BYTES (1024 * 1024)

static const char *const message_types[] = {
	"track", "identify", "page", "screen", "group", "alias"
};

/* mark a message dead with a code and a reason (printf-style) */
void
CdpMarkDead(CdpMessage *msg, const char *code, const char *fmt,...)
{
	size_t		size = 128;

	for (;;)
	{
		char	   *buf = palloc(size);
		va_list		args;
		size_t		needed;

		va_start(args, fmt);
		needed = pvsnprintf(buf, size, fmt, args);
		va_end(args);
		if (needed < size)
		{
			msg->error_message = buf;
			break;
		}
		pfree(buf);
		size = needed;
	}
	msg->outcome = CDP_DEAD;
	msg->error_code = code;
}

/*
 * The text to keep in a dead letter: the message as validated (envelope
 * fields merged in, writeKey removed), or where it could not be parsed the
 * text as received with every writeKey value redacted.
 */
const char *
CdpMessagePayload(CdpMessage *msg)
{
	if (msg->raw != NULL)
		return CdpRedactWriteKeys(msg->raw);
	return CdpJsonbValueToText(msg->item);
}

static CdpMessage *
NewMessage(const CdpInboxRow *row)
{
	CdpMessage *msg = palloc0(sizeof(CdpMessage));

	msg->inbox_id = row->id;
	msg->source = row->source;
	msg->received_at = row->received_at;
	return msg;
}

/* item's key (an object) with defaults' keys added where item lacks them */
static JsonbValue *
ApplyEnvelopeObject(JsonbValue *item, const char *key, JsonbValue *defaults)
{
	JsonbValue *own;

	if (defaults == NULL || defaults->type != jbvObject)
		return item;
	own = CdpJsonbObjectGet(item, key);
	if (own == NULL || own->type == jbvNull)
		return CdpJsonbObjectWith(item, key, defaults);
	if (own->type == jbvObject)
		return CdpJsonbObjectWith(item, key, CdpJsonbObjectMergeMissing(own, defaults));
	return item;				/* a wrong type is reported by validation */
}

/*
 * Check what can be checked without reading the row's payload: one too large
 * to read becomes one dead letter.  Returns whether the payload must be
 * scanned (CdpScanRow) before its messages are made: whether it may be a
 * batch envelope.
 */
bool
CdpPrepareRow(CdpInboxRow *row)
{
	row->nitems = -1;
	if (row->size > cdp_max_request_bytes)
	{
		row->error_code = "too_large";
		row->error_message = psprintf("payload is " INT64_FORMAT " bytes, more than cdp.max_request_bytes (%d)",
									  row->size, cdp_max_request_bytes);
		return false;
	}

	/*
	 * A message is parsed whole; anything larger may only be an envelope.  A
	 * "batch" key shows in the text as such, or spelled with \u escapes.
	 */
	return row->len > cdp_max_event_bytes ||
		strstr(row->payload, "batch") != NULL ||
		strstr(row->payload, "\\u") != NULL;
}

/* a field the envelope gives its items; false (row dead) if unusable */
static bool
SharedField(CdpInboxRow *row, CdpJsonSpan span, JsonbValue **out)
{
	const char *code;
	char	   *reason;

	*out = NULL;
	if (span.start < 0)
		return true;
	*out = CdpParseJsonValue(row->payload + span.start, span.len, &code, &reason);
	if (*out != NULL)
	{
		row->shared_len += span.len;
		return true;
	}
	row->error_code = code;
	row->error_message = reason;
	return false;
}

/*
 * Find what a payload holds without building its tree: one message, the
 * items of a batch envelope (with the envelope's context, integrations and
 * sentAt parsed for them), or why the row as a whole cannot be stored.
 * Raises an error only on absurd input (nesting beyond the stack, a number
 * beyond numeric's range in a shared field).
 */
void
CdpScanRow(CdpInboxRow *row)
{
	CdpEnvelopeScan scan;
	const char *code;
	char	   *reason;

	if (!CdpScanEnvelope(row->payload, row->len, &scan, &code, &reason))
	{
		row->error_code = code;
		row->error_message = reason;
		return;
	}
	if (scan.root != JSON_TOKEN_OBJECT_START)
	{
		row->error_code = "not_an_object";
		row->error_message = scan.root == JSON_TOKEN_ARRAY_START ?
			pstrdup("message is an array, not an object") :
			pstrdup("message is a JSON scalar, not an object");
		return;
	}
	if (!scan.has_batch)
		return;					/* one message */
	if (scan.batch_type != JSON_TOKEN_ARRAY_START)
	{
		row->error_code = "batch_not_array";
		row->error_message = psprintf("\"batch\" must be an array, not %s",
									  CdpJsonTokenName(scan.batch_type));
		return;
	}
	if (!SharedField(row, scan.context, &row->context) ||
		!SharedField(row, scan.integrations, &row->integrations) ||
		!SharedField(row, scan.sent_at, &row->sent_at))
		return;
	row->nitems = scan.nitems;
	row->items = scan.items;
}

/* how many messages a prepared (and if need be scanned) row holds */
int
CdpRowMessages(const CdpInboxRow *row)
{
	return (row->error_code != NULL || row->nitems < 0) ? 1 : row->nitems;
}

/* the input bytes a message of the row stands for (its share of a batch) */
int64
CdpMessageCost(const CdpInboxRow *row, int item)
{
	if (row->error_code != NULL || row->nitems < 0)
		return row->len;
	return row->items[item].len + row->shared_len;
}

/* a message that is not stored: the row's (or item's) text and why */
CdpMessage *
CdpFailedMessage(const CdpInboxRow *row, int item, const char *code, const char *reason)
{
	CdpMessage *msg = NewMessage(row);

	if (item < 0 || row->error_code != NULL || row->nitems < 0)
		msg->raw = row->payload;
	else
		msg->raw = pnstrdup(row->payload + row->items[item].start, row->items[item].len);
	CdpMarkDead(msg, code, "%s", reason);
	return msg;
}

static void
MarkTooLarge(CdpMessage *msg, int64 len)
{
	CdpMarkDead(msg, "too_large", "message is " INT64_FORMAT " bytes, more than cdp.max_event_bytes (%d)",
				len, cdp_max_event_bytes);
}

/* the row's payload as one message */
static CdpMessage *
SingleMessage(const CdpInboxRow *row)
{
	CdpMessage *msg = NewMessage(row);
	JsonbValue *root;
	const char *code;
	char	   *reason;

	msg->raw = row->payload;
	if (row->len > cdp_max_event_bytes)
	{
		MarkTooLarge(msg, row->len);
		return msg;
	}
	root = CdpParseJson(row->payload, row->len, &code, &reason);
	if (root == NULL)
	{
		CdpMarkDead(msg, code, "%s", reason);
		return msg;
	}
	if (root->type != jbvObject)
	{
		CdpMarkDead(msg, "not_an_object", "message is %s, not an object", CdpJsonTypeName(root));
		return msg;
	}

	/* a write key is never stored, not even in a dead letter */
	if (CdpJsonbObjectGet(root, "writeKey") != NULL)
	{
		root = CdpJsonbObjectWithout(root, "writeKey");
		msg->raw = NULL;		/* dead letters re-serialise the item */
	}
	msg->item = root;
	return msg;
}

/*
 * Item i of the row's envelope, parsed on its own, with the envelope's
 * context and integrations merged into its own key by key and the
 * envelope's sentAt given if it has none.
 */
static CdpMessage *
EnvelopeItem(const CdpInboxRow *row, int i)
{
	CdpMessage *msg = NewMessage(row);
	CdpJsonSpan span = row->items[i];
	JsonbValue *item;
	const char *code;
	char	   *reason;

	/*
	 * Parsed even when too large (up to a point), so that its dead letter
	 * carries what the envelope gave it and replays as it would have been
	 * stored.
	 */
	msg->raw = pnstrdup(row->payload + span.start, span.len);
	if (span.len > cdp_max_event_bytes && span.len > TOO_LARGE_PARSE_BYTES)
	{
		MarkTooLarge(msg, span.len);
		return msg;
	}
	item = CdpParseJsonValue(msg->raw, span.len, &code, &reason);
	if (item == NULL || item->type != jbvObject)
	{
		if (span.len > cdp_max_event_bytes)
			MarkTooLarge(msg, span.len);
		else if (item == NULL)
			CdpMarkDead(msg, code, "%s", reason);
		else
			CdpMarkDead(msg, "not_an_object",
						"batch item %d is %s, not an object", i, CdpJsonTypeName(item));
		return msg;
	}
	msg->raw = NULL;
	item = CdpJsonbObjectWithout(item, "writeKey");
	item = ApplyEnvelopeObject(item, "context", row->context);
	item = ApplyEnvelopeObject(item, "integrations", row->integrations);
	if (row->sent_at != NULL && row->sent_at->type != jbvNull)
	{
		JsonbValue *own = CdpJsonbObjectGet(item, "sentAt");

		if (own == NULL || own->type == jbvNull)
			item = CdpJsonbObjectWith(item, "sentAt", row->sent_at);
	}
	msg->item = item;

	/* only a long item, or what the envelope added, takes it over the limit */
	if (span.len + row->shared_len > cdp_max_event_bytes)
	{
		int			len = strlen(CdpJsonbValueToText(item));

		if (len > cdp_max_event_bytes)
			MarkTooLarge(msg, len);
	}
	return msg;
}

/*
 * Message item of a prepared row (item -1 for a row that is one message, or
 * one dead letter); a message already known bad comes back marked dead.
 * Parsing is here, per message, so a message costs about its own size.
 */
CdpMessage *
CdpRowMessage(const CdpInboxRow *row, int item)
{
	if (row->error_code != NULL)
		return CdpFailedMessage(row, -1, row->error_code, row->error_message);
	if (row->nitems < 0)
		return SingleMessage(row);
	return EnvelopeItem(row, item);
}

/* how much of a string value to quote in a message: 64 bytes, whole characters */
static int
ClipLen(JsonbValue *v)
{
	return pg_mbcliplen(v->val.string.val, v->val.string.len, 64);
}

/* an identifier-like field: string or number; "" and null mean absent */
static bool
IdField(CdpMessage *msg, const char *field, const char **out)
{
	JsonbValue *v = CdpJsonbObjectGet(msg->item, field);

	*out = NULL;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (v->type == jbvString)
	{
		if (v->val.string.len > 0)
			*out = pnstrdup(v->val.string.val, v->val.string.len);
		return true;
	}
	if (v->type == jbvNumeric)
	{
		*out = DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
		return true;
	}
	CdpMarkDead(msg, "invalid_field_type", "\"%s\" must be a string or a number, not %s",
				field, CdpJsonTypeName(v));
	return false;
}

/* a text field: string or absent */
static bool
StringField(CdpMessage *msg, const char *field, const char **out)
{
	JsonbValue *v = CdpJsonbObjectGet(msg->item, field);

	*out = NULL;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (v->type == jbvString)
	{
		if (v->val.string.len > 0)
			*out = pnstrdup(v->val.string.val, v->val.string.len);
		return true;
	}
	CdpMarkDead(msg, "invalid_field_type", "\"%s\" must be a string, not %s",
				field, CdpJsonTypeName(v));
	return false;
}

/* an object field: object or absent */
static bool
ObjectField(CdpMessage *msg, const char *field, JsonbValue **out)
{
	JsonbValue *v = CdpJsonbObjectGet(msg->item, field);

	*out = NULL;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (v->type == jbvObject)
	{
		*out = v;
		return true;
	}
	CdpMarkDead(msg, "invalid_field_type", "\"%s\" must be an object, not %s",
				field, CdpJsonTypeName(v));
	return false;
}

/* a timestamp field: ISO 8601 string or absent */
static bool
TimestampField(CdpMessage *msg, const char *field, bool *present, TimestampTz *out)
{
	JsonbValue *v = CdpJsonbObjectGet(msg->item, field);

	*present = false;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (v->type == jbvString &&
		CdpParseIsoTimestamp(v->val.string.val, v->val.string.len, out))
	{
		*present = true;
		return true;
	}
	if (v->type == jbvString)
		CdpMarkDead(msg, "invalid_timestamp", "\"%s\" is not an ISO 8601 timestamp: \"%.*s\"",
					field, ClipLen(v), v->val.string.val);
	else
		CdpMarkDead(msg, "invalid_timestamp", "\"%s\" must be an ISO 8601 string, not %s",
					field, CdpJsonTypeName(v));
	return false;
}

static char *
GenerateMessageId(void)
{
	uint8		b[16];

	if (!pg_strong_random(b, sizeof(b)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random messageId")));
	b[6] = (b[6] & 0x0f) | 0x40;	/* UUID version 4 */
	b[8] = (b[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
	return psprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
					b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
					b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static bool
IsMappedField(const char *key, int len)
{
	for (int i = 0; i < lengthof(mapped_fields); i++)
		if ((int) strlen(mapped_fields[i]) == len && memcmp(mapped_fields[i], key, len) == 0)
			return true;
	return false;
}

/* the top-level fields with no column, kept so nothing a client sent is lost */
static JsonbValue *
ExtraFields(JsonbValue *item)
{
	JsonbValue *extra = NULL;

	for (int i = 0; i < item->val.object.nPairs; i++)
	{
		JsonbPair  *p = &item->val.object.pairs[i];

		if (IsMappedField(p->key.val.string.val, p->key.val.string.len))
			continue;
		if (extra == NULL)
		{
			extra = palloc(sizeof(JsonbValue));
			extra->type = jbvObject;
			extra->val.object.nPairs = 0;
			extra->val.object.pairs = palloc(sizeof(JsonbPair) * item->val.object.nPairs);
		}
		/* a subset of sorted pairs stays sorted */
		extra->val.object.pairs[extra->val.object.nPairs++] = *p;
	}
	return extra;
}

static bool
ValidateType(CdpMessage *msg)
{
	JsonbValue *v = CdpJsonbObjectGet(msg->item, "type");
	char	   *type;

	if (v == NULL || v->type == jbvNull)
	{
		CdpMarkDead(msg, "missing_type", "message has no \"type\"");
		return false;
	}
	if (v->type != jbvString)
	{
		CdpMarkDead(msg, "invalid_field_type", "\"type\" must be a string, not %s",
					CdpJsonTypeName(v));
		return false;
	}
	type = pnstrdup(v->val.string.val, v->val.string.len);
	for (char *c = type; *c; c++)
		*c = pg_ascii_tolower((unsigned char) *c);
	for (int i = 0; i < lengthof(message_types); i++)
	{
		if (strcmp(type, message_types[i]) == 0)
		{
			msg->type = message_types[i];
			return true;
		}
	}
	CdpMarkDead(msg, "unknown_type",
				"unknown message type \"%.*s\" (expected track, identify, page, screen, group or alias)",
				ClipLen(v), v->val.string.val);
	return false;
}

static bool
ValidateFields(CdpMessage *msg)
{
	if (!ValidateType(msg))
		return false;

	if (!StringField(msg, "messageId", &msg->message_id))
		return false;
	if (msg->message_id != NULL &&
		pg_mbstrlen(msg->message_id) > CDP_MAX_MESSAGE_ID_CHARS)
	{
		CdpMarkDead(msg, "message_id_too_long", "\"messageId\" is %d characters, more than %d",
					pg_mbstrlen(msg->message_id), CDP_MAX_MESSAGE_ID_CHARS);
		return false;
	}

	if (!IdField(msg, "userId", &msg->user_id) ||
		!IdField(msg, "anonymousId", &msg->anonymous_id) ||
		!IdField(msg, "previousId", &msg->previous_id) ||
		!IdField(msg, "groupId", &msg->group_id) ||
		!StringField(msg, "event", &msg->event) ||
		!StringField(msg, "name", &msg->name) ||
		!ObjectField(msg, "properties", &msg->properties) ||
		!ObjectField(msg, "traits", &msg->traits) ||
		!ObjectField(msg, "context", &msg->context))
		return false;

	if (strcmp(msg->type, "alias") == 0)
	{
		if (msg->previous_id == NULL || msg->user_id == NULL)
		{
			CdpMarkDead(msg, "missing_identity", "alias needs both \"previousId\" and \"userId\"");
			return false;
		}
	}
	else if (msg->user_id == NULL && msg->anonymous_id == NULL)
	{
		CdpMarkDead(msg, "missing_identity", "%s needs \"userId\" or \"anonymousId\"", msg->type);
		return false;
	}

	if (strcmp(msg->type, "track") == 0 && msg->event == NULL)
	{
		CdpMarkDead(msg, "missing_event", "track needs a non-empty \"event\"");
		return false;
	}
	if (strcmp(msg->type, "group") == 0 && msg->group_id == NULL)
	{
		CdpMarkDead(msg, "missing_group_id", "group needs \"groupId\"");
		return false;
	}
	return true;
}

/*
 * Event time: receivedAt - (sentAt - originalTimestamp), which cancels a
 * client clock that is off; without sentAt the client's time stands, without
 * any client time the receipt time does.
 */
static bool
ComputeEventTime(CdpMessage *msg)
{
	bool		has_timestamp,
				has_original;
	TimestampTz timestamp,
				original;
	int64		skew;

	if (!TimestampField(msg, "timestamp", &has_timestamp, &timestamp) ||
		!TimestampField(msg, "originalTimestamp", &has_original, &original) ||
		!TimestampField(msg, "sentAt", &msg->has_sent_at, &msg->sent_at))
		return false;

	msg->has_original_ts = has_timestamp || has_original;
	msg->original_ts = has_timestamp ? timestamp : original;

	if (!msg->has_original_ts)
		msg->ts = msg->received_at;
	else if (!msg->has_sent_at)
		msg->ts = msg->original_ts;
	else if (pg_sub_s64_overflow(msg->sent_at, msg->original_ts, &skew) ||
			 pg_sub_s64_overflow(msg->received_at, skew, &msg->ts) ||
			 !IS_VALID_TIMESTAMP(msg->ts))
	{
		CdpMarkDead(msg, "invalid_timestamp",
					"\"sentAt\" and the message time are too far apart to correct");
		return false;
	}

	if (msg->ts < CDP_MIN_EVENT_TS)
	{
		CdpMarkDead(msg, "invalid_timestamp",
					"event time %s is before %s, the earliest event time accepted",
					pstrdup(timestamptz_to_str(msg->ts)),
					pstrdup(timestamptz_to_str(CDP_MIN_EVENT_TS)));
		return false;
	}

	/* a clock far ahead is not believed: store at receipt, keep what it said */
	if (msg->ts - msg->received_at > (int64) cdp_max_future_skew_secs * USECS_PER_SEC)
		msg->ts = msg->received_at;
	return true;
}

/*
 * Check one expanded message against the spec and fill in its fields; on
 * failure it is marked dead with the reason.  An event older than the
 * retention horizon (DT_NOBEGIN: none) is dead-lettered as expired.
 */
void
CdpValidateMessage(CdpMessage *msg, TimestampTz retention_horizon)
{
	if (msg->outcome != CDP_PENDING)
		return;
	if (!ValidateFields(msg) || !ComputeEventTime(msg))
		return;

	if (msg->ts < retention_horizon)
	{
		/* timestamptz_to_str returns a static buffer: one call per copy */
		CdpMarkDead(msg, "expired", "event time %s is before the retention horizon %s",
					pstrdup(timestamptz_to_str(msg->ts)),
					pstrdup(timestamptz_to_str(retention_horizon)));
		return;
	}

	if (msg->message_id == NULL)
	{
		msg->message_id = GenerateMessageId();
		msg->message_id_generated = true;
	}
	msg->extra = ExtraFields(msg->item);
}
