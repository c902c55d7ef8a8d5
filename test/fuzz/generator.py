"""Seeded generator of hostile Segment-spec payloads.

The generator knows nothing about how a payload reaches the database: it
yields Line objects (the payload text, the source it is sent for, and what
the line holds), and a transport (transports.py) delivers them.  Everything
the checks need to account for each message is in the metadata:

  Line.messages   the messages the line holds once expanded (one for a plain
                  message, one per item of a batch envelope, none for an empty
                  batch); each with its marker, messageId and expectation.
  Line.whole      'never': the line is always expanded into its messages;
                  'must': the line is one message that can only be dead-lettered
                  whole (not JSON, too large, ...);
                  'may': either (a limit near its size, a parser corner case).
  Line.jsonb_ok   False when the text is not something jsonb accepts, None when
                  the generator cannot tell: a transport that goes through jsonb
                  (cdp.ingest) may then refuse it.

Every object message carries a top-level "fuzzId" marker (kept in
cdp.events.extra) and every envelope a "fuzzLine" marker, so stored events and
dead letters can be traced back to the message and line they came from.
Write keys the generator puts into payloads all start with WRITE_KEY_PREFIX;
they must never be stored anywhere.
"""

import random

EVENT_LIMIT = 32 * 1024          # cdp.max_event_bytes default
REQUEST_LIMIT = 512 * 1024       # cdp.max_request_bytes default
WRITE_KEY_PREFIX = 'wkfz-'
TYPES = ['track', 'identify', 'page', 'screen', 'group', 'alias']

# sources the harness creates before the run (see fuzz.py)
SOURCE_OK = ['fuzz_web', 'copy', 'sql']
SOURCE_DISABLED = 'fuzz_off'
SOURCE_UNKNOWN = ['fuzz_nosuch', 'Fuzz Web', 'fuzz_web ']

# a few far-past days only: every distinct day makes a partition
FAR_PAST = ['0001-01-01T00:00:00Z', '1000-06-15T12:00:00Z', '1899-12-31T23:59:59.999999Z',
            '1970-01-01T00:00:00Z']


class Raw(str):
    """JSON text written verbatim (hostile fragments the serialiser cannot make)."""


def _json_str(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == '\\':
            out.append('\\\\')
        elif ch == '\b':
            out.append('\\b')
        elif ch == '\f':
            out.append('\\f')
        elif ch == '\n':
            out.append('\\n')
        elif ch == '\r':
            out.append('\\r')
        elif ch == '\t':
            out.append('\\t')
        elif o < 0x20:
            out.append('\\u%04x' % o)
        else:
            out.append(ch)
    out.append('"')
    return ''.join(out)


def dump(v, pg=False):
    """Serialise: compact JSON as SDKs send it, or (pg=True) exactly the text
    jsonb prints (", " and ": " separators, keys shorter-first then bytewise),
    so that sizes are the same whether a line goes in verbatim or via jsonb."""
    if isinstance(v, Raw):
        return str(v)
    if v is None:
        return 'null'
    if v is True:
        return 'true'
    if v is False:
        return 'false'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, list):
        return ('[' + (', ' if pg else ',').join(dump(x, pg) for x in v) + ']')
    if isinstance(v, dict):
        items = list(v.items())
        if pg:
            items.sort(key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        sep, col = (', ', ': ') if pg else (',', ':')
        return '{' + sep.join(_json_str(k) + col + dump(x, pg) for k, x in items) + '}'
    raise TypeError(type(v))


def nbytes(s):
    return len(s.encode('utf-8'))


class Message:
    """One message as the pipeline will see it.  expect: 'store' (stored, or a
    duplicate of a stored messageId), 'dead' (dead-lettered, with code when
    the error code is certain) or 'any'."""
    __slots__ = ('marker', 'message_id', 'expect', 'code')

    def __init__(self, marker, message_id, expect, code=None):
        self.marker = marker
        self.message_id = message_id
        self.expect = expect
        self.code = code


class Line:
    __slots__ = ('no', 'family', 'payload', 'source', 'messages', 'whole', 'whole_code',
                 'jsonb_ok', 'bad_source', 'marker', 'verbatim')

    def __init__(self, family, payload, messages, whole='never', jsonb_ok=True,
                 whole_code=None, marker=None):
        self.no = None
        self.family = family
        self.payload = payload
        self.source = None
        self.messages = messages
        self.whole = whole
        self.whole_code = whole_code
        self.jsonb_ok = jsonb_ok
        self.bad_source = None      # 'unknown' / 'disabled'
        self.marker = marker
        self.verbatim = False       # only a transport that keeps the text as it is

    @property
    def count(self):
        """how many messages the line is: one if it can only die whole"""
        return 1 if self.whole == 'must' else len(self.messages)


class Generator:
    # family -> weight in the mix
    FAMILIES = {
        'valid': 18, 'envelope': 10, 'malformed': 7, 'types': 9, 'numbers': 6,
        'timestamps': 10, 'nesting': 3, 'sizes': 2, 'unicode': 8, 'dupes': 10,
        'writekey': 6, 'sources': 4, 'tiny_items': 1,
    }

    def __init__(self, seed, skip=(), huge_envelopes=1, huge_items=170000):
        self.seed = seed
        self.rng = random.Random(seed)
        self.tag = 'fz%d' % seed
        self.line_no = 0
        self.wk_no = 0
        self.huge_envelopes = huge_envelopes
        self.huge_items = huge_items
        self.families = [(f, w) for f, w in self.FAMILIES.items() if f not in skip]
        self.mid_pool = ['%s-mid-%d' % (self.tag, i) for i in range(200)]
        self.real_key = None        # a working write key, set by the runner

    # -- small pieces ---------------------------------------------------------
    def _marker(self, item):
        return '%s.%d.%d' % (self.tag, self.line_no, item)

    def line_marker(self):
        return '%sL.%d' % (self.tag, self.line_no)

    def write_key(self):
        self.wk_no += 1
        return '%s%d-%d-%08x' % (WRITE_KEY_PREFIX, self.seed, self.wk_no, self.rng.getrandbits(32))

    def some_write_key(self):
        if self.real_key and self.rng.random() < 0.3:
            return self.real_key
        return self.write_key()

    def unique_mid(self, item):
        return '%s-m-%d-%d' % (self.tag, self.line_no, item)

    def recent_ts(self):
        # on two fixed days, so that a seed replays exactly, in a few ISO 8601
        # spellings; without a retention horizon any day is stored
        s = self.rng.randrange(0, 86400)
        h, m, sec = s // 3600, s % 3600 // 60, s % 60
        day = '2026-12-0%d' % self.rng.choice([1, 2])
        return self.rng.choice([
            '%sT%02d:%02d:%02dZ' % (day, h, m, sec),
            '%sT%02d:%02d:%02d.%03dZ' % (day, h, m, sec, self.rng.randrange(1000)),
            '%s %02d:%02d:%02d+01:00' % (day, h, m, sec),
            '%sT%02d:%02d:%02d-05:30' % (day, h, m, sec),
        ])

    def obj(self, item, typ=None, mid=None):
        """a valid message as a dict, with its marker; returns (dict, Message)"""
        r = self.rng
        typ = typ or r.choice(TYPES)
        marker = self._marker(item)
        mid = mid if mid is not None else self.unique_mid(item)
        m = {'type': typ}
        if mid is not False:
            m['messageId'] = mid
        m['fuzzId'] = marker
        if typ == 'alias':
            m['previousId'] = 'anon-%d' % r.randrange(5000)
            m['userId'] = 'user-%d' % r.randrange(5000)
        else:
            k = r.randrange(3)
            if k != 1:
                m['userId'] = r.choice(['user-%d' % r.randrange(5000), r.randrange(1, 10**6)])
            if k != 0:
                m['anonymousId'] = 'anon-%d' % r.randrange(5000)
        if typ == 'track':
            m['event'] = r.choice(['Signed Up', 'Order Completed', 'Clicked', 'x'])
            m['properties'] = {'n': r.randrange(100), 'plan': r.choice(['pro', 'free'])}
        elif typ == 'identify':
            m['traits'] = {'email': 'U%d@Example.com' % r.randrange(5000)}
        elif typ in ('page', 'screen'):
            m['name'] = r.choice(['Home', 'Pricing', ''])
        elif typ == 'group':
            m['groupId'] = 'g-%d' % r.randrange(100)
        if r.random() < 0.7:
            m['timestamp'] = self.recent_ts()
        if r.random() < 0.3:
            m['sentAt'] = self.recent_ts()
        if r.random() < 0.3:
            m['context'] = {'library': {'name': 'analytics-node'}, 'ip': '127.0.0.1'}
        if r.random() < 0.1:
            m['integrations'] = {'All': True}
        return m, Message(marker, None if mid is False else mid, 'store')

    def single(self, family, m, msg, **kw):
        return Line(family, dump(m), [msg], **kw)

    # -- families -------------------------------------------------------------
    def f_valid(self):
        m, msg = self.obj(0)
        return self.single('valid', m, msg)

    def f_envelope(self):
        r = self.rng
        marker = self.line_marker()
        k = r.choice([0, 1, 2, 5, 20])
        items, msgs = [], []
        for i in range(k):
            roll = r.random()
            if roll < 0.7:
                m, msg = self.obj(i)
                if r.random() < 0.3:
                    m.pop('context', None)
                items.append(m)
                msgs.append(msg)
            elif roll < 0.85:
                # not an object: no marker, a dead letter of its own
                items.append(r.choice([1, 'x', [], None, True, [{}]]))
                msgs.append(Message(None, None, 'dead', 'not_an_object'))
            else:
                m = {'fuzzId': self._marker(i), 'batch': [{'type': 'track'}]}
                items.append(m)
                msgs.append(Message(m['fuzzId'], None, 'dead', 'missing_type'))
        env = {'fuzzLine': marker, 'batch': items}
        if r.random() < 0.5:
            env['context'] = {'library': {'name': 'analytics.js'}, 'locale': 'de-DE'}
        if r.random() < 0.3:
            env['integrations'] = {'Amplitude': False}
        if r.random() < 0.5:
            env['sentAt'] = self.recent_ts()
        roll = r.random()
        if roll < 0.1:
            # batch not an array: the whole line is one dead letter
            env['batch'] = r.choice([{}, 'x', 1, None, {'0': {}}])
            return Line('envelope', dump(env), [Message(None, None, 'dead')], whole='must',
                        whole_code='batch_not_array', marker=marker)
        if roll < 0.15:
            env['type'] = 'track'   # a message and an envelope at once: the batch wins
        return Line('envelope', dump(env), msgs, marker=marker)

    def f_malformed(self):
        r = self.rng
        m, msg = self.obj(0)
        text = dump(m)
        cut = r.randrange(1, len(text))
        variants = [
            (text[:cut], 'invalid_json'),                       # truncated
            (text[:-1] + ',}', 'invalid_json'),                 # trailing comma
            (text.replace('"', "'"), 'invalid_json'),           # single quotes
            (text + ' {}', 'invalid_json'),                     # trailing garbage
            (text[:-1] + ',"x":NaN}', 'invalid_json'),
            (text[:-1] + ',"x":Infinity}', 'invalid_json'),
            (text[:-1] + ',x:1}', 'invalid_json'),              # unquoted key
            ('/*c*/' + text, 'invalid_json'),
            ('\ufeff' + text, 'invalid_json'),                  # BOM
            (text[:-1] + ',"x":"a\tb"}', 'invalid_json'),       # raw control char
            (text[:-1] + ',"x":"\\x41"}', 'invalid_json'),      # bad escape
            (text[:-1] + ',"x":01}', 'invalid_json'),           # leading zero
            (text[:-1] + ',"x":.5}', 'invalid_json'),
            (text[:-1] + ',"x":"\\u12"}', 'invalid_json'),
            ('', 'invalid_json'),
            ('   ', 'invalid_json'),
            ('{', 'invalid_json'),
            ('}', 'invalid_json'),
            ('{"batch":[{},', 'invalid_json'),
            ('null', 'not_an_object'),
            ('[]', 'not_an_object'),
            ('[' + text + ']', 'not_an_object'),
            ('"' + self.tag + '"', 'not_an_object'),
            ('123', 'not_an_object'),
            ('true', 'not_an_object'),
        ]
        payload, code = r.choice(variants)
        # an empty line loads as NULL through COPY: still one invalid_json dead letter
        ok = code == 'not_an_object'
        return Line('malformed', payload, [Message(None, None, 'dead', code)], whole='must',
                    whole_code=code, jsonb_ok=ok)

    def f_types(self):
        r = self.rng
        field, value, code = r.choice([
            ('type', 'TRACK', None), ('type', 'Identify', None),
            ('type', 'unknown', 'unknown_type'), ('type', '', 'unknown_type'),
            ('type', 1, 'invalid_field_type'), ('type', ['track'], 'invalid_field_type'),
            ('type', None, 'missing_type'), ('type', 'track\u0001', 'unknown_type'),
            ('event', 1, 'invalid_field_type'), ('event', {'a': 1}, 'invalid_field_type'),
            ('name', [], 'invalid_field_type'),
            ('properties', [1, 2], 'invalid_field_type'), ('properties', 'x', 'invalid_field_type'),
            ('traits', 1, 'invalid_field_type'), ('context', [], 'invalid_field_type'),
            ('context', 'ctx', 'invalid_field_type'),
            ('userId', {'id': 1}, 'invalid_field_type'), ('userId', True, 'invalid_field_type'),
            ('userId', [1], 'invalid_field_type'),
            ('anonymousId', False, 'invalid_field_type'),
            ('messageId', 12345, 'invalid_field_type'),
            ('messageId', {'x': 1}, 'invalid_field_type'),
            ('messageId', 100, None), ('messageId', 101, 'message_id_too_long'),
            ('messageId', -100, None), ('messageId', -101, 'message_id_too_long'),
            ('messageId', '', None), ('messageId', None, None),
            ('groupId', {'g': 1}, 'invalid_field_type'),
            ('timestamp', 1700000000000, 'invalid_timestamp'),
            ('sentAt', {'t': 1}, 'invalid_timestamp'),
            ('originalTimestamp', True, 'invalid_timestamp'),
        ])
        typ = value.lower() if field == 'type' and code is None else None
        m, msg = self.obj(0, typ)
        if field == 'messageId' and isinstance(value, int) and code != 'invalid_field_type':
            # a messageId of exactly that many characters (negative: multibyte), unique
            pad = 'x' if value > 0 else '\u00e9'
            value = self.unique_mid(0) + pad * (abs(value) - len(self.unique_mid(0)))
        m[field] = value
        if code is not None:
            msg.expect, msg.code, msg.message_id = 'dead', code, None
        elif field == 'messageId':
            msg.message_id = value or None
        return self.single('types', m, msg)

    def f_numbers(self):
        r = self.rng
        m, msg = self.obj(0, 'track')
        raw, expect, whole = r.choice([
            ('1e999999', 'dead', 'may'), ('-1e999999', 'dead', 'may'), ('1e-999999', 'any', 'may'),
            ('1e131071', 'any', 'may'), ('1e1000', 'store', 'never'), ('-0', 'store', 'never'),
            ('123456789012345678901234567890123456789012345678901234567890', 'store', 'never'),
            ('0.000000000000000000000000000000001', 'store', 'never'),
            ('1E+2', 'store', 'never'), ('-9223372036854775809', 'store', 'never'),
            ('1' * 1000, 'store', 'never'),
        ])
        where = r.choice(['properties', 'userId', 'anonymousId', 'groupId', 'context'])
        if where == 'properties':
            m['properties'] = {'big': Raw(raw)}
        elif where == 'context':
            m['context'] = {'n': Raw(raw)}
        else:
            m[where] = Raw(raw)
        msg.expect = expect
        if whole == 'may':
            return Line('numbers', dump(m), [msg], whole='may', jsonb_ok=None)
        return self.single('numbers', m, msg)

    def f_timestamps(self):
        r = self.rng
        m, msg = self.obj(0)
        field = r.choice(['timestamp', 'timestamp', 'originalTimestamp', 'sentAt'])
        value, expect = r.choice([
            (self.recent_ts(), 'store'),
            (r.choice(FAR_PAST), 'any'),
            ('9999-12-31T23:59:59.999999+14:00', 'store'),
            ('2026-12-02T10:00:00.123456789123Z', 'any'),
            ('2026-12-02T10:00:00+23:59', 'any'),
            ('2026-12-02T10:00:00+99:99', 'any'),
            ('2026-12-02T24:00:00Z', 'any'),
            ('2026-12-02T10:00:60Z', 'any'),
            ('2026-02-30T10:00:00Z', 'any'),
            ('2026-12-02', 'any'),
            ('2026-12-02T10:00', 'any'),
            ('2026-12-02T10:00:00.Z', 'any'),
            ('0000-01-01T00:00:00Z', 'any'),
            ('-0001-01-01T00:00:00Z', 'dead'),
            ('4713-01-01 BC', 'dead'),
            ('294277-01-01T00:00:00Z', 'dead'),
            ('infinity', 'dead'), ('-infinity', 'dead'), ('now', 'dead'), ('epoch', 'dead'),
            ('', 'dead'), (' ', 'dead'), ('2026-12-02T10:00:00Z ', 'any'),
            ('2026-12-02T10:00:00\u0000Z', 'any'),
            ('\u0661\u0669\u0667\u0660-01-01', 'dead'),
            ('Tue, 01 Dec 2026 10:00:00 GMT', 'dead'),
        ])
        m[field] = value
        if field == 'sentAt' and expect == 'store' and not value.startswith('2026-12-0'):
            expect = 'any'      # sentAt far from the message time: too far apart to correct
        if field != 'sentAt' and r.random() < 0.3:
            m['sentAt'] = r.choice([self.recent_ts(), '0001-01-01T00:00:00Z',
                                    '9999-12-31T23:59:59Z'])
            if expect == 'store':
                expect = 'any'
        msg.expect = expect
        if expect == 'dead':
            msg.code = 'invalid_timestamp'
        if '\u0000' in value:
            # \u0000 in JSON text: text cannot hold it, the whole line is dead
            msg.expect, msg.code = 'dead', None
            return Line('timestamps', dump(m), [msg], whole='must',
                        whole_code='null_character', jsonb_ok=False)
        return Line('timestamps', dump(m), [msg])

    def f_nesting(self):
        r = self.rng
        m, msg = self.obj(0, 'track')
        depth = r.choice([100, 1000, 5000, 20000, 100000])
        kind = r.choice(['array', 'object'])
        if kind == 'array':
            nested = '[' * depth + ']' * depth
        else:
            nested = '{"a":' * depth + '1' + '}' * depth
        m['properties'] = {'deep': Raw(nested)}
        text = dump(m)
        msg.expect = 'any'
        whole = 'may'
        if nbytes(text) > REQUEST_LIMIT:
            whole = 'must'
        return Line('nesting', text, [msg], whole=whole, jsonb_ok=None)

    def _pad_to(self, m, target, pg=True, ch='a'):
        """grow m['properties']['pad'] until dump(m) is exactly target bytes"""
        m.setdefault('properties', {})
        m['properties']['pad'] = ''
        base = nbytes(dump(m, pg))
        unit = nbytes(ch)
        need = target - base
        n = max(0, need // unit)
        m['properties']['pad'] = ch * n
        rest = target - nbytes(dump(m, pg))
        if rest > 0:
            m['properties']['pad'] += 'a' * rest
        assert nbytes(dump(m, pg)) == target or rest < 0
        return dump(m, pg)

    def f_sizes(self):
        r = self.rng
        kind = r.choice(['event', 'event', 'envelope_item', 'request'])
        ch = r.choice(['a', '\u00e9', '\U0001F600'])
        if kind == 'event':
            delta = r.choice([-1, 0, 1, 2, -100, 1000])
            m, msg = self.obj(0, 'track')
            text = self._pad_to(m, EVENT_LIMIT + delta, ch=ch)
            if nbytes(text) > EVENT_LIMIT:
                msg.expect, msg.code = 'dead', 'too_large'
            return Line('sizes', text, [msg])
        marker = self.line_marker()
        if kind == 'envelope_item':
            # one item near the event limit inside an envelope over it
            items, msgs = [], []
            for i in range(3):
                m, msg = self.obj(i, 'track')
                if i == 1:
                    delta = r.choice([0, 1, 50])
                    self._pad_to(m, EVENT_LIMIT + delta, ch=ch)
                    if delta > 0:
                        msg.expect, msg.code = 'dead', 'too_large'
                items.append(m)
                msgs.append(msg)
            env = {'fuzzLine': marker, 'batch': items}
            return Line('sizes', dump(env, True), msgs, marker=marker)
        # a whole request at, or just over, the request limit, of small items
        delta = r.choice([0, 1])
        items, msgs = [], []
        env = {'fuzzLine': marker, 'batch': items}
        i, size = 0, nbytes(dump(env, True))
        while size < REQUEST_LIMIT - 2000:
            m, msg = self.obj(i, 'track')
            m.pop('context', None)
            m['properties']['text'] = 'lorem ipsum ' * 40
            items.append(m)
            msgs.append(msg)
            size += nbytes(dump(m, True)) + 2
            i += 1
        items[-1].setdefault('properties', {})['pad'] = ''
        base = nbytes(dump(env, True))
        items[-1]['properties']['pad'] = 'a' * (REQUEST_LIMIT + delta - base)
        text = dump(env, True)
        assert nbytes(text) == REQUEST_LIMIT + delta, (nbytes(text), REQUEST_LIMIT + delta)
        if delta > 0:
            return Line('sizes', text, msgs, whole='must',
                        whole_code='too_large', marker=marker)
        return Line('sizes', text, msgs, marker=marker)

    UNICODE = [
        ('\\ud800', None), ('\\udc00', None), ('\\ud800\\ud800', None), ('\\udbff\\udfff', 'store'),
        ('\\ud83d\\ude00', 'store'), ('\U0001F468\u200d\U0001F469\u200d\U0001F467', 'store'),
        ('\u202eevil\u202c', 'store'), ('\u0085\u009f\u0080', 'store'), ('\\u0085\\u009f', 'store'),
        ('\ufeff', 'store'), ('\uffff\ufffe', 'store'), ('e\u0301\u0301\u0301', 'store'),
        ('\\u001f\\u0007', 'store'), ('\u00a0\u2028\u2029', 'store'), ('\\u0000', 'nul'),
        ('a\\u0000b', 'nul'), ('\U0010FFFF', 'store'), ('\u0661\u0662\u0663', 'store'),
    ]

    def f_unicode(self):
        r = self.rng
        typ = r.choice(['track', 'identify', 'page'])
        m, msg = self.obj(0, typ)
        frag, expect = r.choice(self.UNICODE)
        where = r.choice(['userId', 'anonymousId', 'event', 'name', 'properties', 'traits',
                          'key', 'messageId', 'context'])
        placeholder = '@@FRAG@@'
        if where in ('userId', 'anonymousId'):
            m[where] = 'u' + placeholder
        elif where in ('event', 'name'):
            if typ == 'track' or where == 'name':
                m[where] = placeholder
            else:
                m[where] = 'n' + placeholder
        elif where in ('properties', 'traits', 'context'):
            m[where] = {'s': placeholder, 'email': placeholder + '@x.io'}
        elif where == 'key':
            m['properties'] = {placeholder: 1}
        elif where == 'messageId':
            m['messageId'] = self.unique_mid(0) + placeholder
            msg.message_id = None   # compared by the pipeline's own decoding
        text = dump(m).replace(placeholder, frag)
        if expect == 'nul':
            msg.expect = 'dead'
            return Line('unicode', text, [msg], whole='must', whole_code='null_character',
                        jsonb_ok=False)
        if expect is None:
            msg.expect = 'any'
            msg.message_id = None
            return Line('unicode', text, [msg], whole='may', jsonb_ok=None)
        if where == 'messageId' and expect == 'store':
            msg.expect = 'any'
        return Line('unicode', text, [msg])

    def f_dupes(self):
        r = self.rng
        marker = self.line_marker()
        if r.random() < 0.5:
            m, msg = self.obj(0, mid=r.choice(self.mid_pool))
            return self.single('dupes', m, msg)
        items, msgs = [], []
        for i in range(r.choice([2, 3, 10])):
            m, msg = self.obj(i, mid=r.choice(self.mid_pool[:20]))
            items.append(m)
            msgs.append(msg)
        return Line('dupes', dump({'fuzzLine': marker, 'batch': items}), msgs, marker=marker)

    def f_writekey(self):
        r = self.rng
        kind = r.choice(['single', 'envelope', 'item', 'item_dead', 'broken', 'too_large',
                         'nonstring', 'envelope_dead'])
        marker = self.line_marker()
        if kind == 'single':
            m, msg = self.obj(0)
            m['writeKey'] = self.some_write_key()
            return self.single('writekey', m, msg)
        if kind == 'nonstring':
            m, msg = self.obj(0)
            m['writeKey'] = r.choice([{'k': self.write_key()}, [self.write_key()]])
            msg.expect = 'any'
            return self.single('writekey', m, msg)
        if kind == 'broken':
            m, msg = self.obj(0)
            m['writeKey'] = self.some_write_key()
            text = dump(m)
            return Line('writekey', text[:-1] + ',,}', [Message(None, None, 'dead')],
                        whole='must', whole_code='invalid_json', jsonb_ok=False)
        if kind == 'too_large':
            # over the limit also once the key is taken out
            m, msg = self.obj(0, 'track')
            self._pad_to(m, EVENT_LIMIT + 10)
            m['writeKey'] = self.some_write_key()
            text = dump(m, True)
            msg.expect, msg.code = 'dead', 'too_large'
            return Line('writekey', text, [msg])
        items, msgs = [], []
        for i in range(r.choice([1, 3])):
            m, msg = self.obj(i)
            if kind in ('item', 'item_dead') or r.random() < 0.3:
                m['writeKey'] = self.some_write_key()
            if kind == 'item_dead' and i == 0:
                del m['type']
                msg.expect, msg.code = 'dead', 'missing_type'
            items.append(m)
            msgs.append(msg)
        env = {'fuzzLine': marker, 'batch': items, 'writeKey': self.some_write_key()}
        if kind == 'envelope_dead':
            env['batch'] = {'not': 'an array'}
            return Line('writekey', dump(env), [Message(None, None, 'dead')], whole='must',
                        whole_code='batch_not_array', marker=marker)
        return Line('writekey', dump(env), msgs, marker=marker)

    def f_tiny_items(self, n=None):
        r = self.rng
        if n is None:
            n = r.choice([10, 100, 300])
            item, code = r.choice([('{}', 'missing_type'), ('1', 'not_an_object'),
                                   ('[]', 'not_an_object'),
                                   ('{"type":"track"}', 'missing_identity')])
        else:
            item, code = '{}', 'missing_type'
        marker = self.line_marker()
        payload = '{"fuzzLine":"%s","batch":[' % marker + ','.join([item] * n) + ']}'
        whole = 'never'
        if nbytes(payload) > REQUEST_LIMIT:
            whole = 'must'
        elif n > 1000:
            # an envelope-level limit on the item count is a sound answer too
            whole = 'may'
        msg = Message(None, None, 'dead', code)
        return Line('tiny_items', payload, [msg] * n, whole=whole,
                    whole_code='too_large' if whole == 'must' else None, marker=marker)

    def huge_tiny_envelope(self):
        # 170 000 items fit the request limit only as compact JSON: jsonb's
        # text (", " between items) would make it too large as a whole
        line = self.f_tiny_items(self.huge_items)
        line.verbatim = True
        return line

    def f_sources(self):
        line = getattr(self, 'f_' + self.rng.choice(['valid', 'envelope', 'valid', 'dupes']))()
        line.family = 'sources'
        line.bad_source = self.rng.choice(['unknown', 'disabled'])
        for msg in line.messages:
            msg.expect, msg.code = 'dead', None
        if line.whole == 'never':
            line.whole = 'may'
        line.whole_code = None
        return line

    # -- the stream -----------------------------------------------------------
    def lines(self, count):
        """Lines until they hold at least count messages; the huge tiny-item
        envelopes (memory) come together, early, so they share a batch."""
        sent = 0
        names = [f for f, _ in self.families]
        weights = [w for _, w in self.families]
        huge_at = 5 if 'tiny_items' in names else None
        while sent < count:
            self.line_no += 1
            if huge_at is not None and self.line_no == huge_at:
                for _ in range(self.huge_envelopes):
                    line = self.huge_tiny_envelope()
                    line.family = 'huge_envelopes'
                    yield self._finish(line)
                    self.line_no += 1
            fam = self.rng.choices(names, weights)[0]
            line = getattr(self, 'f_' + fam)()
            yield self._finish(line)
            sent += line.count

    def _finish(self, line):
        line.no = self.line_no
        if line.bad_source == 'disabled':
            line.source = SOURCE_DISABLED
        elif line.bad_source == 'unknown':
            line.source = self.rng.choice(SOURCE_UNKNOWN)
        else:
            line.source = self.rng.choice(SOURCE_OK)
        return line
