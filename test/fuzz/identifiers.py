"""Hostile inputs for the cdp.identifier type, and what every answer must satisfy.

Each input is either refused with SQLSTATE 22P02 (never another error), or
accepted as a normalised identifier: a valid type, a value of 1..1024 bytes
without control characters (C0, DEL, C1), no surrounding white space, email without ASCII
capitals, phone as an optional '+' and digits; and normalising again, or
building it with cdp.identifier(type, value), gives the same identifier.
"""

import re

import psycopg2

TYPE_RE = re.compile(r'^[a-z][a-z0-9_]{0,62}$')
WS = ' \t\n\r\f\v'

PIECES = ['', ' ', '\t', '\n', ':', '::', 'a', 'A', '0', '_', '-', '+', '.', '@', '\u00e9',
          '\U0001F600', '\u202e', '\u0085', '\u0000', '\u0001', '\u007f', '\ufeff', '\u00a0',
          '\u3000', '(', ')', 'x' * 63, 'x' * 64, 'v' * 1024, 'v' * 1025, '\u00e9' * 512,
          '\u00e9' * 513, '%', "'", '"', '\\', '\u0661']
TYPES = ['user_id', 'email', 'phone', 'anonymous_id', 'device_id', 'a', 'a' * 63, 'a' * 64,
         'A', '1a', '_a', 'a-b', 'a b', '', ' email', 'email ', 'EMAIL', 'e\u00e9', 'x_1']


def is_control(c):
    """Unicode's control characters (category Cc): C0, DEL and C1"""
    o = ord(c)
    return o < 0x20 or 0x7f <= o <= 0x9f


def generate(rng, n):
    """n (text, expectation) pairs; expectation 'accept', 'reject' or None"""
    out = []
    for _ in range(n):
        typ = rng.choice(TYPES)
        value = ''.join(rng.choice(PIECES) for _ in range(rng.choice([0, 1, 2, 3, 6])))
        if typ == 'phone' and rng.random() < 0.5:
            value = rng.choice(['+', '', '(0)']) + ''.join(
                rng.choice('0123456789 -.') for _ in range(rng.randrange(12)))
        if typ == 'email' and rng.random() < 0.5:
            value = rng.choice(['Ann@X.io', ' MiXeD@Example.COM ', '\u00c4@x.io', 'a@b'])
        text = typ + ':' + value if rng.random() < 0.95 else value
        if '\u0000' in text:
            text = text.replace('\u0000', '')   # text cannot hold NUL at all
        out.append((text, expectation(text)))
    return out


def expectation(text):
    if ':' not in text:
        return 'reject'
    typ, value = text.split(':', 1)
    if not TYPE_RE.match(typ):
        return 'reject'
    v = value.strip(WS)
    if not v or len(v.encode()) > 1024:
        return 'reject'
    if any(is_control(c) for c in v):
        return 'reject'
    if typ == 'phone':
        return None     # whether anything but '+' is left depends on the digits
    return 'accept'


def check_value(typ, value):
    """problems with an accepted identifier's parts"""
    bad = []
    if not TYPE_RE.match(typ):
        bad.append('type %r does not match the type pattern' % typ)
    b = len(value.encode())
    if not 1 <= b <= 1024:
        bad.append('value is %d bytes' % b)
    if any(is_control(c) for c in value):
        bad.append('value holds a control character')
    if value != value.strip(WS):
        bad.append('value keeps surrounding white space')
    if typ == 'email' and re.search('[A-Z]', value):
        bad.append('email keeps ASCII capitals')
    if typ == 'phone' and not re.match(r'^\+?[0-9]+$', value):
        bad.append('phone is not +digits')
    return bad


def run(dsn, rng, n):
    """returns (checked, failures)"""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    failures = []
    for text, expect in generate(rng, n):
        try:
            cur.execute("""
                SELECT x::text, cdp.id_type(x), cdp.id_value(x),
                       cdp.identifier(cdp.id_type(x), cdp.id_value(x))::text,
                       (x::text)::cdp.identifier::text,
                       x OPERATOR(cdp.=) (x::text)::cdp.identifier
                  FROM (SELECT %s::cdp.identifier AS x) s""", (text,))
            t, typ, value, built, again, equal = cur.fetchone()
        except psycopg2.Error as e:
            if e.pgcode != '22P02':
                failures.append('%r raised %s (%s), not 22P02' % (text[:80], e.pgcode,
                                                                  (e.pgerror or '').strip()[:200]))
            elif expect == 'accept':
                failures.append('%r refused: %s' % (text[:80], (e.pgerror or '').strip()[:200]))
            continue
        if expect == 'reject':
            failures.append('%r accepted as %r' % (text[:80], t[:80]))
        bad = check_value(typ, value)
        if t != typ + ':' + value:
            bad.append('text %r is not type:value' % t[:80])
        if built != t:
            bad.append('cdp.identifier(type, value) gives %r' % built[:80])
        if again != t or not equal:
            bad.append('normalising again gives %r' % again[:80])
        if bad:
            failures.append('%r -> %r: %s' % (text[:80], t[:80], '; '.join(bad)))
    conn.close()
    return n, failures
