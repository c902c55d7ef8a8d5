#!/usr/bin/env python3
"""Soak the HTTP endpoint with hostile and broken clients; report the worker's memory.

Optional, long: not part of `make test` (test/t/025_http_hostile.pl holds the short
regression checks).  Run it against a running server with pg_cdp preloaded, its HTTP
endpoint on, and psql reaching cdp.database_name (as a superuser, PG* variables), e.g.

    pg_virtualenv -t -o shared_preload_libraries=pg_cdp -o cdp.http_port=18123 \\
        -o cdp.database_name=cdp_soak bash -c 'createdb cdp_soak &&
        psql -c "create extension pg_cdp" cdp_soak &&
        PGDATABASE=cdp_soak python3 test/http_soak.py --port 18123 --requests 100000'

Phases (each prints VmRSS / VmHWM / RssAnon of the 'pg_cdp http' worker before and after):
  mixed    --requests requests from --threads threads, each picked at random: 200s
           (single, batch, gzip, pipelined), 400 bad JSON, 401 unknown or missing key,
           404, 400 too_large refused from Content-Length and after streaming, bad gzip,
           /metrics, /health, a close in the middle of a body, a close while the request
           is held for the commit; then checks that every acknowledged messageId
           reaches cdp.inbox or cdp.events.
  hangup   --hangups clients sending a request's start and closing: the worker must
           close them too (no CLOSE-WAIT left, cdp_http_connections back to 1).
  big      --big clients at once posting ~500 kB batches (plain, then gzip): 200 or
           429 overloaded, never a crash; the worker's peak memory stays near
           256 MB of bodies plus one request's work.
  term     --term-seconds of load while the worker is terminated now and then: no
           acknowledged message is lost, none is stored twice in cdp.inbox (run with
           cdp.ingest_workers = 0 for the second check, else it is skipped).
RSS includes the shared buffers the worker touched; RssAnon is its own memory, which
glibc keeps after use (malloc_trim would give it back): look at growth across phases.
"""
import argparse, base64, collections, gzip, json, random, socket, subprocess, sys, threading, time, uuid

A = None
AUTH = None
acked = []
lock = threading.Lock()


def psql(sql):
    return subprocess.run(['psql', '-XAtq'], input=sql + ';', capture_output=True, text=True).stdout.strip()


def worker_pid():
    return int(psql("select pid from pg_stat_activity where backend_type = 'pg_cdp http'") or 0)


def memory():
    pid = worker_pid()
    d = {}
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith(('VmRSS', 'VmHWM', 'RssAnon')):
                k, v = line.split(':')
                d[k] = int(v.split()[0])
    except OSError:
        pass
    return ' '.join(f'{k} {v // 1024} MB' for k, v in sorted(d.items()))


def conn(timeout=30):
    return socket.create_connection(('127.0.0.1', A.port), timeout=timeout)


def request(path, body=b'', method='POST', headers=None, auth=True):
    if isinstance(body, str):
        body = body.encode()
    lines = [f'{method} {path} HTTP/1.1', 'Host: soak']
    if auth:
        lines.append('Authorization: ' + AUTH)
    headers = headers or {}
    if 'Content-Length' not in headers and body is not None:
        lines.append(f'Content-Length: {len(body)}')
    lines += [f'{k}: {v}' for k, v in headers.items() if v is not None]
    return ('\r\n'.join(lines) + '\r\n\r\n').encode() + (body or b'')


def responses(s, n=1, timeout=30):
    """n answers as (status, headers); fewer when the server closes"""
    s.settimeout(timeout)
    buf, out = b'', []
    while len(out) < n:
        while b'\r\n\r\n' not in buf:
            d = s.recv(65536)
            if not d:
                return out
            buf += d
        head, buf = buf.split(b'\r\n\r\n', 1)
        lines = head.decode('latin1').split('\r\n')
        h = {k.strip().lower(): v.strip() for k, v in (l.split(':', 1) for l in lines[1:])}
        length = int(h.get('content-length', 0))
        while len(buf) < length:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        buf = buf[length:]
        out.append((int(lines[0].split()[1]), h))
    return out


def track(mid):
    return json.dumps({'userId': 'soak', 'event': 'Soaked', 'messageId': mid})


def batch(mids, pad=0):
    return json.dumps({'batch': [{'type': 'track', 'userId': 'soak', 'event': 'Soaked', 'messageId': m,
                                  'properties': {'p': 'x' * pad}} for m in mids]})


def ack(status, mids):
    if status == 200:
        with lock:
            acked.extend(mids)


def one_mixed(kind, s):
    """one request of this kind on s; returns (socket to go on with or None, outcome)"""
    bad = 'Basic ' + base64.b64encode(b'cdp_unknown:').decode()
    simple = {
        'bad_json': request('/v1/track', '{"userId":'),
        'bad_key': request('/v1/track', track('x'), auth=False, headers={'Authorization': bad}),
        'no_key': request('/v1/track', track('x'), auth=False),
        'not_found': request('/v1/nowhere', track('x')),
        'metrics': request('/metrics', None, method='GET'),
        'health': request('/health', None, method='GET'),
        'gzip_bad': request('/v1/track', b'\x1f\x8b\x08\x00garbage', headers={'Content-Encoding': 'gzip'}),
        'too_large_streamed': request('/v1/track', None, headers={'Transfer-Encoding': 'chunked'})
        + b'9c40\r\n' + b'x' * 40000 + b'\r\n0\r\n\r\n',
    }
    if kind in simple:
        s.sendall(simple[kind])
        r = responses(s)
    elif kind in ('single', 'gzip'):
        m = str(uuid.uuid4())
        body = track(m).encode()
        s.sendall(request('/v1/track', gzip.compress(body), headers={'Content-Encoding': 'gzip'})
                  if kind == 'gzip' else request('/v1/track', body))
        r = responses(s)
        ack(r[0][0] if r else 0, [m])
    elif kind == 'batch':
        ms = [str(uuid.uuid4()) for _ in range(5)]
        s.sendall(request('/v1/batch', batch(ms)))
        r = responses(s)
        ack(r[0][0] if r else 0, ms)
    elif kind == 'pipelined':
        ms = [str(uuid.uuid4()) for _ in range(10)]
        s.sendall(b''.join(request('/v1/track', track(m)) for m in ms))
        r = responses(s, 10)
        for m, x in zip(ms, r):
            ack(x[0], [m])
    elif kind == 'too_large_early':
        s.sendall(request('/v1/batch', None, headers={'Content-Length': '10000000'}) + b'{"batch":[')
        r = responses(s)
    elif kind == 'close_mid_body':
        s.sendall(request('/v1/batch', None, headers={'Content-Length': '100000'}) + b'{"batch":[' + b' ' * 30000)
        s.close()
        return None, 'closed'
    elif kind == 'close_held':
        s.sendall(request('/v1/track', track(str(uuid.uuid4()))))
        s.close()
        return None, 'closed'
    if not r:
        s.close()
        return None, 'no answer'
    if any(h.get('connection', '').lower() == 'close' for _, h in r):
        s.close()
        s = None
    return s, ','.join(sorted({str(x[0]) for x in r}))


KINDS = ['single', 'batch', 'gzip', 'pipelined', 'bad_json', 'bad_key', 'no_key', 'not_found', 'metrics',
         'health', 'gzip_bad', 'too_large_streamed', 'too_large_early', 'close_mid_body', 'close_held']


def mixed():
    outcomes = collections.Counter()

    def run(n, seed):
        rnd, s = random.Random(seed), None
        for _ in range(n):
            kind = rnd.choice(KINDS)
            try:
                s = s or conn()
                s, out = one_mixed(kind, s)
            except OSError as e:
                out, s = type(e).__name__, None
            with lock:
                outcomes[(kind, out)] += 1
            if s is not None and rnd.random() < 0.1:
                s.close()
                s = None

    print('mixed: before', memory(), flush=True)
    done, step = 0, max(A.requests // 5, 1)
    while done < A.requests:
        t0 = time.time()
        ts = [threading.Thread(target=run, args=(step // A.threads, random.random())) for _ in range(A.threads)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        done += step
        print(f'mixed: {done} requests ({time.time() - t0:.1f} s for the last {step})', memory(), flush=True)
    for (kind, out), n in sorted(outcomes.items()):
        print(f'  {kind:20s} {out:12s} {n}')
    check_acked()


def check_acked():
    with lock:
        ids = list(acked)
    found = set()
    for i in range(0, len(ids), 20000):
        part = ','.join("'" + m + "'" for m in ids[i:i + 20000])
        found |= set(psql(f"""select m from (select message_id m from cdp.events where message_id in ({part})
            union all select e->>'messageId' from cdp.inbox, jsonb_array_elements(
                case when payload::jsonb ? 'batch' then payload::jsonb->'batch' else jsonb_build_array(payload::jsonb) end) e
            where e->>'messageId' in ({part})) x""").split())
    print(f'acknowledged {len(ids)}, of which missing from cdp.inbox and cdp.events: {len(set(ids) - found)}', flush=True)


def hangup():
    print('hangup: before', memory(), flush=True)
    for i in range(A.hangups):
        s = conn()
        s.sendall(b'POST /v1/track HTTP/1.1\r\nHost' if i % 2 else
                  request('/v1/batch', None, headers={'Content-Length': '1000'}) + b'{"batch":[')
        s.close()
    time.sleep(3)
    s = conn()
    s.sendall(request('/metrics', None, method='GET', headers={'Connection': 'close'}))
    text = b''
    while True:
        d = s.recv(65536)
        if not d:
            break
        text += d
    open_now = [l for l in text.decode().splitlines() if l.startswith('cdp_http_connections')]
    print(f'hangup: {A.hangups} clients hung up mid-request; 3 s later', open_now, memory(), flush=True)


def big():
    for gz in (False, True):
        outcomes = collections.Counter()
        bodies = [batch([str(uuid.uuid4()) for _ in range(800)], pad=500).encode() for _ in range(8)]
        if gz:
            bodies = [gzip.compress(b) for b in bodies]
        barrier = threading.Barrier(A.big)

        def post(i):
            try:
                s = conn(120)
                data = request('/v1/batch', bodies[i % 8], headers={'Content-Encoding': 'gzip'} if gz else None)
                s.sendall(data[:-1])
                barrier.wait()
                s.sendall(data[-1:])
                r = responses(s, 1, 120)
                out = r[0][0] if r else 'no answer'
                s.close()
            except (OSError, threading.BrokenBarrierError) as e:
                out = type(e).__name__
            with lock:
                outcomes[out] += 1

        print(f'big{" gzip" if gz else ""}: before', memory(), flush=True)
        ts = [threading.Thread(target=post, args=(i,)) for i in range(A.big)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print(f'big{" gzip" if gz else ""}: {A.big} bodies of {len(bodies[0])} bytes at once:', dict(outcomes),
              memory(), flush=True)


def term():
    stop, outcomes, mine = [False], collections.Counter(), []

    def client():
        s = None
        while not stop[0]:
            ms = [str(uuid.uuid4()) for _ in range(3)]
            try:
                s = s or conn()
                s.sendall(request('/v1/batch', batch(ms)))
                r = responses(s)
                out = r[0][0] if r else 'no answer'
                if not r or r[0][1].get('connection') == 'close':
                    s.close()
                    s = None
            except OSError as e:
                out, s = type(e).__name__, None
                time.sleep(0.05)
            with lock:
                outcomes[out] += 1
                if out == 200:
                    mine.extend(ms)
                    acked.extend(ms)

    ts = [threading.Thread(target=client) for _ in range(16)]
    [t.start() for t in ts]
    end = time.time() + A.term_seconds
    while time.time() < end:
        time.sleep(1 + random.random())
        psql("select pg_terminate_backend(pid) from pg_stat_activity where backend_type = 'pg_cdp http'")
    stop[0] = True
    [t.join() for t in ts]
    print('term:', dict(outcomes), flush=True)
    if psql('show cdp.ingest_workers') == '0':
        ids = collections.Counter(psql("""select e->>'messageId' from cdp.inbox,
            jsonb_array_elements(payload::jsonb->'batch') e""").split())
        print(f'term: acknowledged {len(mine)}, missing {sum(1 for m in mine if not ids[m])}, '
              f'stored twice {sum(1 for c in ids.values() if c > 1)}', flush=True)
    else:
        check_acked()


def main():
    global A, AUTH
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--key', help="a write key (default: a new source 'soak')")
    p.add_argument('--requests', type=int, default=100000)
    p.add_argument('--threads', type=int, default=8)
    p.add_argument('--hangups', type=int, default=5000)
    p.add_argument('--big', type=int, default=600)
    p.add_argument('--term-seconds', type=int, default=20)
    p.add_argument('phases', nargs='*', default=['mixed', 'hangup', 'big', 'term'])
    A = p.parse_args()
    key = A.key or psql("select cdp.create_source('soak-' || md5(random()::text))")
    AUTH = 'Basic ' + base64.b64encode((key + ':').encode()).decode()
    for phase in A.phases:
        globals()[phase]()
    print('end:', memory())


if __name__ == '__main__':
    main()
