"""How generated lines reach the inbox.

A transport takes lines (generator.Line) and returns, per line number, a
Receipt: whether the line was accepted and the received_at it got, as
microseconds since the epoch.  received_at is how the checks find the events
and dead letters a line became: each accepted line gets its own.

  copy    COPY cdp.inbox (payload, source, received_at), the bulk-load path; each
          line gets received_at = base + its line number in microseconds.
  ingest  SELECT cdp.ingest(payload::jsonb, source), one transaction per line, so
          the line's received_at is that transaction's now().
  http    (the HTTP endpoint, once it exists) would POST each line to /v1/batch
          with the source's write key and read received_at back the same way;
          the generator and the checks need no change for it.
"""

import io

import psycopg2

US = "(extract(epoch FROM %s) * 1000000)::int8"


class Receipt:
    __slots__ = ('received_us', 'error', 'returned', 'code', 'queued_bytes')

    def __init__(self, received_us=None, error=None, returned=None):
        self.received_us = received_us
        self.error = error          # SQLSTATE and message when the line was refused
        self.code = None            # the SQLSTATE alone
        self.returned = returned    # what cdp.ingest returned
        self.queued_bytes = None    # for a refusal as too large: what would have been queued


class CopyTransport:
    name = 'copy'

    def __init__(self, dsn, base_us):
        self.conn = psycopg2.connect(dsn)
        self.base_us = base_us

    def send(self, lines):
        """One COPY per run of lines; a line for a bad source goes alone, in a
        savepoint, so that a refusal (if sources are checked at load) is its own."""
        receipts = {}
        cur = self.conn.cursor()
        run = []

        def flush():
            if not run:
                return
            buf = io.StringIO()
            for line in run:
                us = self.base_us + line.no
                buf.write('%s\x02%s\x02%s\n' % (line.payload, line.source, iso(us)))
                receipts[line.no] = Receipt(us)
            buf.seek(0)
            cur.copy_expert("COPY cdp.inbox (payload, source, received_at) FROM STDIN "
                            "WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')", buf)
            run.clear()

        for line in lines:
            for ch in ('\n', '\r', '\x01', '\x02', '\x00'):
                assert ch not in line.payload, (line.no, line.family)
            if line.bad_source:
                flush()
                run.append(line)
                cur.execute('SAVEPOINT bad_source')
                try:
                    flush()
                    cur.execute('RELEASE SAVEPOINT bad_source')
                except psycopg2.Error as e:
                    cur.execute('ROLLBACK TO SAVEPOINT bad_source')
                    receipts[line.no] = Receipt(None, '%s: %s' % (e.pgcode, e.pgerror))
                    run.clear()
            else:
                run.append(line)
        flush()
        self.conn.commit()
        return receipts

    def close(self):
        self.conn.close()


class IngestTransport:
    name = 'ingest'

    def __init__(self, dsn):
        self.conn = psycopg2.connect(dsn)
        cur = self.conn.cursor()
        cur.execute('SET synchronous_commit = off')
        self.conn.commit()

    def send(self, lines):
        receipts = {}
        cur = self.conn.cursor()
        for line in lines:
            try:
                cur.execute('SELECT cdp.ingest(%s::jsonb, %s), ' + US % 'now()',
                            (line.payload, line.source))
                returned, us = cur.fetchone()
                self.conn.commit()
                receipts[line.no] = Receipt(us, None, returned)
            except psycopg2.Error as e:
                self.conn.rollback()
                rc = Receipt(None, '%s: %s' % (e.pgcode, (e.pgerror or '').strip()))
                rc.code = e.pgcode
                if e.pgcode == '54000':
                    rc.queued_bytes = self.queued_bytes(cur, line.payload)
                receipts[line.no] = rc
        return receipts

    def queued_bytes(self, cur, payload):
        """the size of what cdp.ingest would queue: jsonb's text without the
        writeKey of the envelope and of its items"""
        cur.execute("""
            SELECT octet_length(CASE
              WHEN jsonb_typeof(j) <> 'object' THEN j
              WHEN jsonb_typeof(j->'batch') = 'array' THEN
                jsonb_set(j - 'writeKey', '{batch}',
                  (SELECT coalesce(jsonb_agg(CASE WHEN jsonb_typeof(e) = 'object'
                                                  THEN e - 'writeKey' ELSE e END ORDER BY n), '[]')
                     FROM jsonb_array_elements(j->'batch') WITH ORDINALITY a(e, n)))
              ELSE j - 'writeKey' END::text)
              FROM (SELECT %s::jsonb AS j) s""", (payload,))
        n = cur.fetchone()[0]
        self.conn.rollback()
        return n

    def close(self):
        self.conn.close()


def iso(us):
    """microseconds since the epoch as a timestamptz literal"""
    import datetime
    t = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + \
        datetime.timedelta(microseconds=us)
    return t.isoformat()
