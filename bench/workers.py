"""bench/workers.py: run by bench/workers inside a throwaway cluster (see there)."""
import io
import os
import statistics
import sys
import threading
import time

import psycopg2

N = int(os.environ['N'])
REPEAT = int(os.environ['REPEAT'])
IDENTITY_N = int(os.environ['IDENTITY_N'])
SAMPLES = int(os.environ['SAMPLES'])
WAITS = os.environ.get('WAITS', '0') == '1'
CHUNK_ROWS = 5000
PRODUCERS = 2
WDB = 'cdp_bench_w'         # cdp.database_name of the cluster
COPY_OPTS = "WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"
worker_cpu = {}             # workers -> their processor seconds in each round


def connect(db, autocommit=True):
    c = psycopg2.connect(dbname=db)
    c.autocommit = autocommit
    return c


def one(db, sql, args=None):
    # no "with connection": in psycopg2 2.9 it opens a transaction block even in autocommit
    c = connect(db)
    try:
        with c.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchone()[0] if cur.description else None
    finally:
        c.close()


def fresh_db(name):
    c = connect('postgres')
    with c.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS %s' % name)
        cur.execute("CREATE DATABASE %s TEMPLATE template0 ENCODING 'UTF8'" % name)
    c.close()


def die(msg):
    print('workers: FAILED: ' + msg, file=sys.stderr)
    sys.exit(1)


def copy_out(db, sql):
    buf = io.BytesIO()
    c = connect(db)
    with c.cursor() as cur:
        cur.copy_expert(sql, buf)
    c.close()
    return buf.getvalue()


def chunks_of(data, rows):
    lines = data.splitlines(keepends=True)
    return [b''.join(lines[i:i + rows]) for i in range(0, len(lines), rows)]


# ------------------------------------------------------------------ data
GEN_SQL = """
SELECT setseed(0.20240601);
CREATE UNLOGGED TABLE src AS
WITH b AS (
    SELECT i, (i * 7919) %% greatest(%(n)s / 8, 1) AS visitor, random() AS r
      FROM generate_series(1, %(n)s) AS i
)
SELECT i, md5('msg' || i)::uuid::text AS message_id,
       md5('anon' || visitor)::uuid::text AS anonymous_id,
       CASE WHEN visitor %% 10 < 3 THEN 'user_' || (100000 + visitor) END AS user_id,
       (ARRAY['Product Viewed', 'Product Added', 'Cart Viewed', 'Checkout Started',
              'Order Completed', 'Signed Up', 'Video Played', 'Search Performed'])[1 + i %% 8] AS event,
       date_trunc('milliseconds', now() - interval '1 hour' * r) AS ts,
       jsonb_build_object('plan', (ARRAY['free', 'starter', 'pro'])[1 + i %% 3],
                          'price', round((r * 250)::numeric, 2), 'quantity', 1 + i %% 5,
                          'product', jsonb_build_object('id', 'prod_' || (i * 31) %% 5000,
                                                        'category', (ARRAY['shoes', 'hats'])[1 + i %% 2]))
           AS properties,
       jsonb_build_object(
           'library', jsonb_build_object('name', '@segment/analytics-node', 'version', '2.1.2'),
           'ip', '203.0.113.' || (1 + visitor %% 254),
           'userAgent', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15',
           'page', jsonb_build_object('path', '/products/' || (i * 31) %% 5000,
                                      'url', 'https://shop.example.com/products/' || (i * 31) %% 5000,
                                      'title', 'Product ' || (i * 31) %% 5000 || ' | Example Shop'),
           'locale', 'en-US', 'timezone', 'Europe/Berlin') AS context
  FROM b;
"""


def generate():
    fresh_db('cdp_bench_gen')
    one('cdp_bench_gen', GEN_SQL % {'n': N})
    jsonl = copy_out('cdp_bench_gen', """COPY (
        SELECT jsonb_strip_nulls(jsonb_build_object('type', 'track', 'messageId', message_id,
                 'anonymousId', anonymous_id, 'userId', user_id, 'event', event,
                 'properties', properties, 'context', context,
                 'timestamp', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')))::text
          FROM src ORDER BY i) TO STDOUT """ + COPY_OPTS)
    # the same information, in cdp.events' columns (profile_id is what resolution finds)
    tsv = copy_out('cdp_bench_gen', """COPY (
        SELECT message_id, 'copy', 'track', event, NULL, NULL::bigint, user_id, anonymous_id,
               NULL, NULL, ts, ts, NULL::timestamptz, now(), properties, NULL::jsonb, context, NULL::jsonb
          FROM src ORDER BY i) TO STDOUT""")
    ident = b''
    if IDENTITY_N > 0:
        # k: a visitor (new anonymousId), a login (new userId and email), then
        # the visitor logging in (merges the two profiles)
        ident = copy_out('cdp_bench_gen', """COPY (
            SELECT CASE i %% 3
                     WHEN 0 THEN jsonb_build_object('type', 'track', 'event', 'Visited',
                                   'anonymousId', 'anon-' || k, 'messageId', 'm-' || i)
                     WHEN 1 THEN jsonb_build_object('type', 'identify', 'userId', 'user-' || k,
                                   'traits', jsonb_build_object('email', 'u' || k || '@example.com'),
                                   'messageId', 'm-' || i)
                     ELSE jsonb_build_object('type', 'identify', 'userId', 'user-' || k,
                                   'anonymousId', 'anon-' || k, 'messageId', 'm-' || i)
                   END::text
              FROM generate_series(0, %d - 1) i, LATERAL (SELECT i / 3 AS k) kk ORDER BY i)
            TO STDOUT %s""" % (IDENTITY_N, COPY_OPTS))
    c = connect('postgres')
    with c.cursor() as cur:
        cur.execute('DROP DATABASE cdp_bench_gen')
    c.close()
    return jsonl, tsv, ident


# ------------------------------------------------------------------ methods
EVENTS_DDL = """
CREATE SCHEMA bench;
CREATE TABLE bench.events (
    message_id text NOT NULL, source text NOT NULL, type text NOT NULL, event text, name text,
    profile_id bigint, user_id text, anonymous_id text, group_id text, previous_id text,
    ts timestamptz NOT NULL, original_timestamp timestamptz, sent_at timestamptz,
    received_at timestamptz NOT NULL, properties jsonb, traits jsonb, context jsonb, extra jsonb
) PARTITION BY RANGE (ts);
CREATE INDEX ON bench.events USING brin (ts);
CREATE INDEX ON bench.events (profile_id, ts);
DO $$
DECLARE d timestamptz;
BEGIN
    FOR d IN SELECT generate_series(date_trunc('day', now(), 'UTC') - interval '2 days',
                                    date_trunc('day', now(), 'UTC') + interval '7 days', interval '1 day')
    LOOP
        EXECUTE format('CREATE TABLE bench.%I PARTITION OF bench.events FOR VALUES FROM (%L) TO (%L)',
                       'events_p' || to_char(d AT TIME ZONE 'UTC', 'YYYYMMDD'), d, d + interval '1 day');
    END LOOP;
END $$;
"""


def raw_copy(tsv):
    fresh_db('cdp_bench_a')
    one('cdp_bench_a', EVENTS_DDL)
    one('cdp_bench_a', 'CHECKPOINT')
    c = connect('cdp_bench_a', autocommit=False)
    t0 = time.time()
    with c.cursor() as cur:
        cur.copy_expert('COPY bench.events FROM STDIN', io.BytesIO(tsv))
    c.commit()
    t = time.time() - t0
    c.close()
    if one('cdp_bench_a', 'SELECT count(*) FROM bench.events') != N:
        die('raw COPY stored the wrong number of events')
    return t


def set_workers(n):
    one('postgres', 'ALTER SYSTEM SET cdp.ingest_workers = %d' % n)
    one('postgres', 'SELECT pg_reload_conf()')


def workers_up(n, timeout=60):
    until = time.time() + timeout
    while time.time() < until:
        if one('postgres', """SELECT count(*) FROM pg_stat_activity
                               WHERE backend_type = 'pg_cdp ingest worker' AND datname = %s""",
               (WDB,)) == n:
            return
        time.sleep(0.05)
    die('%d workers did not start' % n)


def fresh_cdp_db(workers):
    set_workers(workers)
    fresh_db(WDB)
    one(WDB, 'CREATE EXTENSION pg_cdp')
    one(WDB, "SELECT cdp.configure_partitions('1 day', 7)")
    one(WDB, 'CHECKPOINT')
    workers_up(workers)


def produce(chunks, done_at):
    """COPY each chunk into cdp.inbox in its own transaction."""
    c = connect(WDB, autocommit=False)
    with c.cursor() as cur:
        for chunk in chunks:
            cur.copy_expert('COPY cdp.inbox (payload) FROM STDIN ' + COPY_OPTS, io.BytesIO(chunk))
            c.commit()
    c.close()
    done_at.append(time.time())


def sample_waits(stop, waits):
    """What the workers wait for (CPU when nothing), every 5 ms, until stop is set."""
    c = connect(WDB)
    cur = c.cursor()
    while not stop:
        cur.execute("""SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU')
                         FROM pg_stat_activity
                        WHERE backend_type = 'pg_cdp ingest worker' AND state = 'active'""")
        for (w,) in cur.fetchall():
            waits[w] = waits.get(w, 0) + 1
        time.sleep(0.005)
    c.close()


BUSY_SQL = """SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'pg_cdp ingest worker' AND datname = %s AND state = 'active'"""


def drain_with_producers(chunks, on_poll=None, poll=0.02, waits=None):
    """Start the producers; return (seconds until the inbox is empty, seconds of enqueueing)."""
    done_at = []
    threads = [threading.Thread(target=produce, args=(chunks[p::PRODUCERS], done_at))
               for p in range(PRODUCERS)]
    stop = []
    if waits is not None:
        threads.append(threading.Thread(target=sample_waits, args=(stop, waits)))
    mon = connect(WDB)
    cur = mon.cursor()
    t0 = time.time()
    for t in threads:
        t.start()
    while True:
        time.sleep(poll)
        if not on_poll:
            # min(id) walks the index entries of every row taken since the
            # last poll to the heap: polled every 20 ms, that took a twentieth
            # of the machine from the run.  The run ends when the producers
            # are done and no worker is busy (pg_stat_activity is cheap to
            # read); that the inbox is empty then is checked after the clock
            # stops (if it is not, the run goes on)
            if len(done_at) < PRODUCERS:
                continue
            cur.execute(BUSY_SQL, (WDB,))
            if cur.fetchone()[0] > 0:
                continue
            t = time.time() - t0
            cur.execute('SELECT min(id) FROM cdp.inbox')
            if cur.fetchone()[0] is None:
                break
            continue
        cur.execute('SELECT min(id) FROM cdp.inbox')
        low = cur.fetchone()[0]
        on_poll(time.time() - t0, low)
        if len(done_at) == PRODUCERS and low is None:
            t = time.time() - t0
            break
    stop.append(True)
    for th in threads:
        th.join()
    mon.close()
    return t, max(done_at) - t0


def workers_cpu():
    """Processor seconds the ingest workers have used (they start with each fresh database)."""
    c = connect(WDB)
    with c.cursor() as cur:
        cur.execute("""SELECT pid FROM pg_stat_activity
                        WHERE backend_type = 'pg_cdp ingest worker' AND datname = %s""", (WDB,))
        pids = [r[0] for r in cur.fetchall()]
    c.close()
    ticks = 0
    for pid in pids:
        try:
            with open('/proc/%d/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])     # utime, stime
        except (OSError, IndexError, ValueError):
            return None
    return ticks / os.sysconf('SC_CLK_TCK')


def with_workers(n, chunks, waits=None):
    fresh_cdp_db(n)
    t, enq = drain_with_producers(chunks, waits=waits)
    cpu = workers_cpu()
    if cpu is not None:
        worker_cpu.setdefault(n, []).append(cpu)
    stored = one(WDB, 'SELECT count(*) FROM cdp.events')
    dead = one(WDB, 'SELECT count(*) FROM cdp.dead_letters')
    if stored != N or dead != 0:
        die('%d workers stored %s events (%s dead letters), expected %d' % (n, stored, dead, N))
    return t, enq


def identity_heavy(chunks):
    fresh_cdp_db(2)
    marks = {}

    def note(elapsed, low):
        done = IDENTITY_N if low is None else low - 1   # ids start at 1 in a fresh database
        tenth = min(10, done * 10 // IDENTITY_N)
        for k in range(1, tenth + 1):
            marks.setdefault(k, elapsed)

    t, enq = drain_with_producers(chunks, note, poll=0.1)
    note(t, None)
    dead = one(WDB, 'SELECT count(*) FROM cdp.dead_letters')
    profiles = one(WDB, 'SELECT count(*) FROM cdp.profiles')
    tenths = [marks[k] - marks.get(k - 1, 0.0) for k in range(1, 11)]
    return t, enq, tenths, dead, profiles


def latency():
    fresh_cdp_db(2)
    c = connect(WDB)
    cur = c.cursor()
    got = []
    for s in range(SAMPLES):
        anon = 'lat-%d' % s
        cur.execute("SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'Tapped', "
                    "'anonymousId', %s, 'messageId', %s))", (anon, anon))
        t0 = time.time()    # autocommit: cdp.ingest's transaction has committed
        while True:
            cur.execute("SELECT EXISTS (SELECT 1 FROM cdp.events WHERE message_id = %s) "
                        "AND cdp.resolve(cdp.identifier('anonymous_id', %s)) IS NOT NULL",
                        (anon, anon))
            if cur.fetchone()[0]:
                break
            time.sleep(0.0005)
        got.append((time.time() - t0) * 1000)
        time.sleep(0.02)    # light load: the workers are idle again
    c.close()
    got.sort()
    return got


# ------------------------------------------------------------------ run
def main():
    if one('postgres', 'SHOW fsync') != 'on':
        die('fsync is off')
    print('generating %d events%s ...' % (N, ' and %d identity-heavy messages' % IDENTITY_N
                                           if IDENTITY_N else ''))
    jsonl, tsv, ident = generate()
    chunks = chunks_of(jsonl, CHUNK_ROWS)
    times = {'A': [], 'W1': [], 'W2': []}
    enqueue = {'W1': [], 'W2': []}
    waits = {'W1': {}, 'W2': {}} if WAITS else None
    order = ['A', 'W1', 'W2']
    for r in range(REPEAT):
        print('round %d of %d ...' % (r + 1, REPEAT), flush=True)
        for m in order[r % 3:] + order[:r % 3]:
            if m == 'A':
                times[m].append(raw_copy(tsv))
            else:
                t, enq = with_workers(int(m[1]), chunks, waits[m] if WAITS else None)
                times[m].append(t)
                enqueue[m].append(enq)

    print()
    print('== pg_cdp background workers benchmark')
    print('events:   %d analytics-node track calls (%.1f MB of JSON lines), %d producers '
          'COPYing chunks of %d rows' % (N, len(jsonl) / 1048576, PRODUCERS, CHUNK_ROWS))
    print('machine:  %d CPUs; server %s' % (os.cpu_count(), one('postgres', 'SHOW server_version')))
    # the producers' COPY commits as the server says; the workers' batches
    # always commit asynchronously (what they take was queued durably)
    print('settings: fsync=%s, synchronous_commit=%s (workers\' batches: off), shared_buffers=%s, '
          'cdp.batch_size=%s' % (
        one('postgres', 'SHOW fsync'), one('postgres', 'SHOW synchronous_commit'),
        one('postgres', 'SHOW shared_buffers'), one(WDB, 'SHOW cdp.batch_size')))
    print('rounds:   %d, methods in rotating order; best and median' % REPEAT)
    print()
    print('%-34s %8s %8s %10s %7s %7s' % ('method', 'best s', 'median s', 'events/s', 'ratio', 'median'))
    best_a = min(times['A'])
    med_a = statistics.median(times['A'])
    for m, label in (('A', 'A  raw COPY (flattened text)'), ('W1', 'W1 pg_cdp, 1 worker'),
                     ('W2', 'W2 pg_cdp, 2 workers')):
        b = min(times[m])
        md = statistics.median(times[m])
        print('%-34s %8.3f %8.3f %10.0f %7.2f %7.2f' % (label, b, md, N / b, best_a / b, med_a / md))
    for m in ('W1', 'W2'):
        print('   %s enqueueing took %.3f s (median) of that' % (m, statistics.median(enqueue[m])))
    print('every round (s):  ' + '  '.join('%s %s' % (m, '/'.join('%.2f' % x for x in times[m]))
                                          for m in order))
    print('ratio: throughput relative to A (target with 2 workers: >= 0.5)')
    for n in sorted(worker_cpu):
        print('W%d workers\' processor time (s): best %.2f, median %.2f (every round: %s)'
              % (n, min(worker_cpu[n]), statistics.median(worker_cpu[n]),
                 '/'.join('%.2f' % x for x in worker_cpu[n])))
    if WAITS:
        print('workers busy (sampled every 5 ms, all rounds; the sampling takes CPU too):')
        for m in ('W1', 'W2'):
            total = sum(waits[m].values())
            top = sorted(waits[m].items(), key=lambda kv: -kv[1])[:6]
            print('   %s ' % m + ', '.join('%s %.0f%%' % (k, 100.0 * v / total) for k, v in top))

    if IDENTITY_N:
        t, enq, tenths, dead, profiles = identity_heavy(chunks_of(ident, CHUNK_ROWS))
        print()
        print('identity-heavy, 2 workers: %d messages in %.3f s = %.0f messages/s (target >= 10000); '
              'enqueued in %.3f s' % (IDENTITY_N, t, IDENTITY_N / t, enq))
        print('   per tenth (s): ' + ' '.join('%.2f' % x for x in tenths))
        print('   last tenth / first tenth: %.2f (target <= 1.5); %d profiles, %d dead letters'
              % (tenths[-1] / tenths[0], profiles, dead))

    if SAMPLES:
        got = latency()
        p = lambda q: got[min(len(got) - 1, int(q * len(got)))]
        print()
        print('commit-to-visible latency, idle workers, %d samples: p50 %.1f ms, p99 %.1f ms, '
              'max %.1f ms (targets: p50 < 20, p99 < 100)' % (len(got), p(0.5), p(0.99), got[-1]))


main()
