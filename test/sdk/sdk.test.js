// End-to-end tests of the HTTP endpoint with the real SDKs from npm: each SDK
// sends over a thousand events of every call type in batches, and every
// messageId must be stored exactly once, attributed to the source whose key
// sent it.  Also: events sent again are stored once, an oversized event in a
// batch is dead-lettered alone, each form of authentication the SDKs use
// works (and the 401s), and a full inbox's 429 makes each SDK wait and retry.
//
// Run inside a cluster with the endpoint up (test/sdk/run.sh does):
//   CDP_DB=<database with pg_cdp> CDP_HTTP_PORT=<cdp.http_port> node --test sdk.test.js
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('path');
const fs = require('fs');
const os = require('os');
const { execFile } = require('child_process');
const { psql, sleep, waitInboxEmpty, waitHealthy, post, request, storedById } = require('./db');

const port = Number(process.env.CDP_HTTP_PORT);
const base = `http://127.0.0.1:${port}`;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cdp-sdk-'));
const keys = {};

// Runs send.js (one SDK, one batch of events) and returns its summary.
function runSender(args)
{
	return new Promise((resolve) => {
		execFile(process.execPath, [path.join(__dirname, 'send.js'), ...args],
			{ maxBuffer: 1 << 24 }, (err, stdout, stderr) => {
				let summary = null;
				try
				{
					summary = JSON.parse(stdout.trim().split('\n').pop());
				}
				catch (e)
				{
					// reported below
				}
				resolve({ code: err ? err.code : 0, summary, stderr });
			});
	});
}

// The ids and types a sender recorded.
function readIds(file)
{
	const sent = new Map();
	for (const line of fs.readFileSync(file, 'utf8').split('\n'))
	{
		if (!line)
			continue;
		const [id, type] = line.split('\t');
		sent.set(id, type);
	}
	return sent;
}

// Every sent messageId stored once, with its type and the sender's source,
// and nothing else stored under the run's prefix.
function assertStoredOnce(sent, prefix, source)
{
	const stored = storedById(prefix);
	const missing = [...sent.keys()].filter((id) => !stored.has(id));
	assert.deepEqual(missing.slice(0, 10), [], `${missing.length} messageIds not stored`);
	const twice = [...stored].filter(([, rows]) => rows.length > 1).map(([id]) => id);
	assert.deepEqual(twice.slice(0, 10), [], `${twice.length} messageIds stored more than once`);
	const extra = [...stored.keys()].filter((id) => !sent.has(id));
	assert.deepEqual(extra.slice(0, 10), [], 'rows nobody sent');
	const wrong = [...stored].filter(([id, [row]]) => row.source !== source || row.type !== sent.get(id));
	assert.deepEqual(wrong.slice(0, 5), [], `rows with a wrong source or type (want source ${source})`);
	assert.equal(psql(`SELECT count(*) FROM cdp.dead_letters WHERE source = '${source}'`), '0',
		'no dead letter for the source');
}

test.before(async () => {
	assert.ok(port > 0, 'CDP_HTTP_PORT is set');
	for (const name of ['seg', 'rud', 'body', 'basic'])
		keys[name] = psql(`SELECT cdp.create_source('sdk_${name}')`);
	await waitHealthy(base);
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('Segment analytics-node: 1,200 events in batches, each stored once under its source', async () => {
	const ids = path.join(tmp, 'seg.ids');
	const r = await runSender(['--sdk', 'segment', '--url', base, '--key', keys.seg,
		'--prefix', 'seg', '--count', '1200', '--flush-at', '50', '--per-tick', '50',
		'--tick-ms', '20', '--ids-out', ids]);
	assert.equal(r.code, 0, `sender failed: ${JSON.stringify(r.summary)} ${r.stderr}`);
	assert.equal(r.summary.acked, 1200);
	assert.ok(r.summary.requests >= 24, 'sent in batches');
	// analytics-node 3.x sends both: Basic auth and the key in the body
	assert.equal(r.summary.basicAuth, r.summary.requests, 'Basic auth on every request');
	assert.equal(r.summary.bodyWriteKey, r.summary.requests, 'writeKey in every body');
	await waitInboxEmpty();
	assertStoredOnce(readIds(ids), 'seg', 'sdk_seg');
	// the key it put in every body is not kept anywhere
	assert.equal(psql(`SELECT count(*) FROM cdp.events e WHERE e::text LIKE '%${keys.seg}%'`), '0',
		'the write key is not stored');
});

test('RudderStack rudder-sdk-node: 1,200 gzipped events in batches, each stored once under its source', async () => {
	const ids = path.join(tmp, 'rud.ids');
	const r = await runSender(['--sdk', 'rudder', '--url', base, '--key', keys.rud,
		'--prefix', 'rud', '--count', '1200', '--flush-at', '50', '--per-tick', '50',
		'--tick-ms', '20', '--ids-out', ids]);
	assert.equal(r.code, 0, `sender failed: ${JSON.stringify(r.summary)} ${r.stderr}`);
	assert.equal(r.summary.acked, 1200);
	assert.ok(r.summary.requests >= 24, 'sent in batches');
	assert.equal(r.summary.gzip, r.summary.requests, 'gzip on every request (its default)');
	assert.equal(r.summary.basicAuth, r.summary.requests, 'Basic auth on every request');
	await waitInboxEmpty();
	assertStoredOnce(readIds(ids), 'rud', 'sdk_rud');
	// its messages carry their own sentAt and originalTimestamp
	assert.equal(psql(`SELECT count(*) FROM cdp.events WHERE message_id LIKE 'rud-%'
		AND (sent_at IS NULL OR original_timestamp IS NULL)`), '0', 'sentAt and originalTimestamp kept');
});

test('events sent again (same messageIds, new sentAt, as an SDK retry does) are stored once', async () => {
	const dedupBefore = Number(psql(`SELECT value FROM cdp.stats WHERE name = 'deduplicated'`));
	const r = await runSender(['--sdk', 'segment', '--url', base, '--key', keys.seg,
		'--prefix', 'seg', '--count', '300', '--flush-at', '50']);
	assert.equal(r.code, 0, `sender failed: ${JSON.stringify(r.summary)} ${r.stderr}`);
	await waitInboxEmpty();
	assertStoredOnce(readIds(path.join(tmp, 'seg.ids')), 'seg', 'sdk_seg');
	assert.equal(Number(psql(`SELECT value FROM cdp.stats WHERE name = 'deduplicated'`)) - dedupBefore,
		300, 'all 300 counted as deduplicated');
});

test('RudderStack sends an event over 32 kB in its batch: it alone is dead-lettered too_large', async () => {
	// rudder-sdk-node only logs an oversized event and sends it anyway
	keys.big = psql(`SELECT cdp.create_source('sdk_big')`);
	const ids = path.join(tmp, 'big.ids');
	const r = await runSender(['--sdk', 'rudder', '--url', base, '--key', keys.big,
		'--prefix', 'big', '--count', '100', '--flush-at', '20', '--big-every', '50',
		'--ids-out', ids]);
	assert.equal(r.code, 0, `sender failed: ${JSON.stringify(r.summary)} ${r.stderr}`);
	await waitInboxEmpty();
	const sent = readIds(ids);
	const big = ['big-7', 'big-57'];
	const stored = storedById('big');
	assert.deepEqual(big.filter((id) => stored.has(id)), [], 'the big events are not stored');
	assert.equal(stored.size, sent.size - big.length, 'every other event is stored');
	assert.equal(psql(`SELECT string_agg(error_code || ' ' || (payload::jsonb->>'messageId'), ','
		ORDER BY payload::jsonb->>'messageId') FROM cdp.dead_letters WHERE source = 'sdk_big'`),
	'too_large big-57,too_large big-7', 'each is a dead letter with its payload');
});

test('writeKey in the body, no Authorization header (analytics.js, older analytics-node)', async () => {
	const sent = new Map();
	const batch = [];
	for (let i = 0; i < 20; i++)
	{
		batch.push({ type: 'track', event: 'Body Key', userId: `body-u${i % 3}`, messageId: `body-b${i}` });
		sent.set(`body-b${i}`, 'track');
	}
	let r = await post(base, '/v1/batch', { batch, writeKey: keys.body, sentAt: new Date().toISOString() },
		{ 'Content-Type': 'text/plain' });
	assert.equal(r.status, 200, r.body);
	assert.deepEqual(JSON.parse(r.body), { success: true });
	// browser single calls: one-letter paths, text/plain
	const singles = [['/v1/t', { event: 'Clicked' }, 'track'], ['/v1/p', { name: 'Home' }, 'page'],
		['/v1/i', { traits: { plan: 'pro' } }, 'identify'], ['/v1/track', { event: 'Full Path' }, 'track']];
	for (const [i, [p, fields, type]] of singles.entries())
	{
		r = await post(base, p, { ...fields, anonymousId: 'body-a1', userId: 'body-u1',
			messageId: `body-s${i}`, writeKey: keys.body }, { 'Content-Type': 'text/plain' });
		assert.equal(r.status, 200, `${p}: ${r.body}`);
		sent.set(`body-s${i}`, type);
	}
	await waitInboxEmpty();
	assertStoredOnce(sent, 'body', 'sdk_body');
	assert.equal(psql(`SELECT count(*) FROM cdp.events e WHERE e::text LIKE '%${keys.body}%'`), '0',
		'the write key is not stored');
});

test('Basic auth on single calls (plain http)', async () => {
	const sent = new Map();
	const calls = [['/v1/identify', { traits: { email: 'b@example.com' } }, 'identify'],
		['/v1/track', { event: 'Basic Key' }, 'track'], ['/v1/screen', { name: 'Home' }, 'screen'],
		['/v1/group', { groupId: 'g1' }, 'group'], ['/v1/alias', { previousId: 'basic-a1' }, 'alias']];
	const auth = 'Basic ' + Buffer.from(`${keys.basic}:`).toString('base64');
	for (const [i, [p, fields, type]] of calls.entries())
	{
		const r = await post(base, p, { ...fields, userId: 'basic-u1', messageId: `basic-${i}` },
			{ Authorization: auth, 'Content-Type': 'application/json' });
		assert.equal(r.status, 200, `${p}: ${r.body}`);
		sent.set(`basic-${i}`, type);
	}
	await waitInboxEmpty();
	assertStoredOnce(sent, 'basic', 'sdk_basic');
});

test('a missing, unknown or disabled key gets 401 and nothing is queued', async () => {
	const msg = (id) => ({ batch: [{ type: 'track', event: 'Nope', userId: 'x', messageId: id }] });
	const bad = 'Basic ' + Buffer.from('cdp_not_a_key:').toString('base64');
	const cases = [
		['no key', msg('deny-1'), {}],
		['unknown Basic key', msg('deny-2'), { Authorization: bad }],
		['unknown body key', { ...msg('deny-3'), writeKey: 'cdp_not_a_key' }, {}],
	];
	const off = psql(`SELECT cdp.create_source('sdk_off')`);
	psql(`SELECT cdp.disable_source('sdk_off')`);
	cases.push(['disabled key', { ...msg('deny-4'), writeKey: off }, {}]);
	for (const [what, body, headers] of cases)
	{
		const r = await post(base, '/v1/batch', body, headers);
		assert.equal(r.status, 401, `${what}: ${r.body}`);
		assert.equal(JSON.parse(r.body).error, 'unauthorized', what);
	}
	// the SDKs do not retry a 401: their callbacks report the failure
	const r = await runSender(['--sdk', 'segment', '--url', base, '--key', 'cdp_not_a_key',
		'--prefix', 'deny-seg', '--count', '3']);
	assert.equal(r.summary.failed, 3, 'Segment reports the 401');
	await waitInboxEmpty();
	assert.equal(psql(`SELECT count(*) FROM cdp.events WHERE message_id LIKE 'deny-%'`), '0');
	assert.equal(psql(`SELECT count(*) FROM cdp.dead_letters WHERE payload LIKE '%deny-%'`), '0');
});

// Sets server settings (ALTER SYSTEM + reload) and waits for the ingest
// workers to match cdp.ingest_workers.
async function reconfigure(settings, workers)
{
	for (const [name, value] of Object.entries(settings))
		psql(value === null ? `ALTER SYSTEM RESET ${name}` : `ALTER SYSTEM SET ${name} = ${value}`);
	psql('SELECT pg_reload_conf()');
	await waitFor(`SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'pg_cdp ingest worker'`, String(workers));
	await sleep(300);	// the endpoint reads the file on its next loop
}

async function waitFor(sql, expected, timeoutMs = 30000)
{
	const until = Date.now() + timeoutMs;
	let got;
	while ((got = psql(sql)) !== expected)
	{
		if (Date.now() > until)
			throw new Error(`${sql}: ${got} after ${timeoutMs} ms, want ${expected}`);
		await sleep(100);
	}
}

// How many answers /metrics counts for POST path with status.
async function answered(p, status)
{
	const r = await request(base, 'GET', '/metrics', null, {});
	const m = r.body.match(new RegExp(`^cdp_http_requests_total\\{path="${p}",status="${status}"\\} (\\d+)$`, 'm'));
	return m ? Number(m[1]) : 0;
}

test('a full inbox: 429 with Retry-After; each SDK waits and then delivers every event once', async () => {
	for (const sdk of ['segment', 'rudder'])
	{
		// no worker drains the inbox, and one queued payload fills it
		await reconfigure({ 'cdp.ingest_workers': 0, 'cdp.max_inbox_depth': 1 }, 0);
		try
		{
			psql(`INSERT INTO cdp.inbox (payload, source) VALUES ('{"type":"track","event":"Fill",
				"userId":"full-u","messageId":"full-fill-${sdk}"}', 'sql')`);
			const r = await post(base, '/v1/batch', { batch: [{ type: 'track', event: 'Full',
				userId: 'x', messageId: 'full-plain' }], writeKey: keys.seg });
			assert.equal(r.status, 429, r.body);
			assert.equal(JSON.parse(r.body).error, 'inbox_full');
			assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After: ${r.headers['retry-after']}`);
			const reset = Number(r.headers['x-ratelimit-reset']);
			assert.ok(reset > Date.now() - 60000 && reset < Date.now() + 3600000,
				`X-RateLimit-Reset in epoch milliseconds: ${r.headers['x-ratelimit-reset']}`);

			const before = await answered('/v1/batch', 429);
			const ids = path.join(tmp, `full-${sdk}.ids`);
			const sender = runSender(['--sdk', sdk, '--url', base,
				'--key', keys[sdk === 'segment' ? 'seg' : 'rud'], '--prefix', `full-${sdk}`,
				'--count', '200', '--flush-at', '50', '--retries', '10', '--ids-out', ids]);
			// refused at least once, then the workers come back
			const until = Date.now() + 30000;
			while (await answered('/v1/batch', 429) === before && Date.now() < until)
				await sleep(50);
			await reconfigure({ 'cdp.ingest_workers': null, 'cdp.max_inbox_depth': null }, 2);
			const done = await sender;
			assert.equal(done.code, 0, `${sdk} sender failed: ${JSON.stringify(done.summary)} ${done.stderr}`);
			assert.ok(done.summary.status['429'] > 0, `${sdk} met a 429: ${JSON.stringify(done.summary.status)}`);
			await waitInboxEmpty();
			assertStoredOnce(readIds(ids), `full-${sdk}`, sdk === 'segment' ? 'sdk_seg' : 'sdk_rud');
		}
		finally
		{
			await reconfigure({ 'cdp.ingest_workers': null, 'cdp.max_inbox_depth': null }, 2);
		}
	}
});
