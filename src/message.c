/*
 * message.c
 *	  Turning inbox payloads into validated messages: batch envelopes are
 *	  expanded (their context, integrations and sentAt apply to items that
 *	  lack them), each message is checked against the Segment spec, and event
 *	  time is corrected for client clock skew.  A message that fails gets a
 *	  stable error code and a readable reason, and later a dead-letter row.
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

/* top-level fields that have a column of their own, or are never stored */
static const char *const mapped_fields[] = {
	"anonymousId", "context", "event", "groupId", "messageId", "name",
	"originalTimestamp", "previousId", "properties", "sentAt", "timestamp",
	"traits", "type", "userId", "writeKey"
};

static const char *const message_types[] = {
	"track", "identify", "page", "screen", "group", "alias"
};

void
CdpMarkDead(CdpMessage *msg, const char *code, const char *fmt,...)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	msg->outcome = CDP_DEAD;
	msg->error_code = code;
	msg->error_message = buf.data;
}

/* the text to keep in a dead letter: verbatim where we have it */
const char *
CdpMessagePayload(CdpMessage *msg)
{
	if (msg->raw == NULL)
		msg->raw = CdpJsonbValueToText(msg->item);
	return msg->raw;
}

static CdpMessage *
NewMessage(int64 inbox_id, const char *source, TimestampTz received_at)
{
	CdpMessage *msg = palloc0(sizeof(CdpMessage));

	msg->inbox_id = inbox_id;
	msg->source = source;
	msg->received_at = received_at;
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

static void
ExpandEnvelope(List **out, JsonbValue *root, JsonbValue *batch, int payload_len,
			   int64 inbox_id, const char *source, TimestampTz received_at)
{
	JsonbValue *context = CdpJsonbObjectGet(root, "context");
	JsonbValue *integrations = CdpJsonbObjectGet(root, "integrations");
	JsonbValue *sent_at = CdpJsonbObjectGet(root, "sentAt");

	for (int i = 0; i < batch->val.array.nElems; i++)
	{
		JsonbValue *item = &batch->val.array.elems[i];
		CdpMessage *msg = NewMessage(inbox_id, source, received_at);

		*out = lappend(*out, msg);
		msg->item = item;
		if (item->type != jbvObject)
		{
			CdpMarkDead(msg, "not_an_object",
						"batch item %d is %s, not an object", i, CdpJsonTypeName(item));
			continue;
		}
		item = ApplyEnvelopeObject(item, "context", context);
		item = ApplyEnvelopeObject(item, "integrations", integrations);
		if (sent_at != NULL && sent_at->type != jbvNull)
		{
			JsonbValue *own = CdpJsonbObjectGet(item, "sentAt");

			if (own == NULL || own->type == jbvNull)
				item = CdpJsonbObjectWith(item, "sentAt", sent_at);
		}
		msg->item = item;

		/* items of a small envelope are small; measure only when it matters */
		if (payload_len > cdp_max_event_bytes)
		{
			int			item_len = strlen(CdpMessagePayload(msg));

			if (item_len > cdp_max_event_bytes)
				CdpMarkDead(msg, "too_large",
							"message is %d bytes, more than cdp.max_event_bytes (%d)",
							item_len, cdp_max_event_bytes);
		}
	}
}

/*
 * Parse one inbox payload into the messages it holds: one, or every item of a
 * batch envelope.  Messages that are already known bad come back marked dead.
 */
List *
CdpExpandPayload(int64 inbox_id, const char *payload, int len, const char *source,
				 TimestampTz received_at)
{
	List	   *out = NIL;
	CdpMessage *msg;
	JsonbValue *root;
	JsonbValue *batch;
	const char *code;
	char	   *reason;

	if (len > cdp_max_request_bytes)
	{
		msg = NewMessage(inbox_id, source, received_at);
		msg->raw = payload;
		CdpMarkDead(msg, "too_large",
					"payload is %d bytes, more than cdp.max_request_bytes (%d)",
					len, cdp_max_request_bytes);
		return list_make1(msg);
	}

	root = CdpParseJson(payload, len, &code, &reason);
	if (root == NULL || root->type != jbvObject)
	{
		msg = NewMessage(inbox_id, source, received_at);
		msg->raw = payload;
		if (root == NULL)
		{
			msg->outcome = CDP_DEAD;
			msg->error_code = code;
			msg->error_message = reason;
		}
		else
			CdpMarkDead(msg, "not_an_object", "message is %s, not an object",
						CdpJsonTypeName(root));
		return list_make1(msg);
	}

	/* a write key is never stored, not even in a dead letter */
	if (CdpJsonbObjectGet(root, "writeKey") != NULL)
	{
		root = CdpJsonbObjectWithout(root, "writeKey");
		payload = NULL;			/* dead letters re-serialise the item */
	}

	batch = CdpJsonbObjectGet(root, "batch");
	if (batch != NULL)
	{
		if (batch->type == jbvArray)
		{
			ExpandEnvelope(&out, root, batch, len, inbox_id, source, received_at);
			return out;
		}
		msg = NewMessage(inbox_id, source, received_at);
		msg->raw = payload;
		msg->item = root;
		CdpMarkDead(msg, "batch_not_array", "\"batch\" must be an array, not %s",
					CdpJsonTypeName(batch));
		return list_make1(msg);
	}

	msg = NewMessage(inbox_id, source, received_at);
	msg->raw = payload;
	msg->item = root;
	if (len > cdp_max_event_bytes)
		CdpMarkDead(msg, "too_large",
					"message is %d bytes, more than cdp.max_event_bytes (%d)",
					len, cdp_max_event_bytes);
	return list_make1(msg);
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
		CdpMarkDead(msg, "invalid_timestamp", "event time %s is before the year 1",
					timestamptz_to_str(msg->ts));
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
