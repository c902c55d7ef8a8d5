// Small helpers for the SDK tests: psql, bounded waits, a plain HTTP POST.
'use strict';

const http = require('http');
const { execFileSync } = require('child_process');

const DB = process.env.CDP_DB || 'cdp_sdk';

// One SQL statement through psql; its unaligned output, trimmed.
function psql(sql)
{
	return execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', DB, '-c', sql],
		{ encoding: 'utf8', maxBuffer: 1 << 26 }).trim();
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Waits (bounded) until the ingest workers have drained the inbox.
async function waitInboxEmpty(timeoutMs = 120000)
{
	const until = Date.now() + timeoutMs;
	let n;
	while ((n = psql('SELECT count(*) FROM cdp.inbox')) !== '0')
	{
		if (Date.now() > until)
			throw new Error(`the inbox still holds ${n} rows after ${timeoutMs} ms`);
		await sleep(100);
	}
}

// POST body (an object: sent as JSON) to base+path; resolves {status, headers, body}.
function post(base, path, body, headers = {})
{
	const data = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
	return request(base, 'POST', path, data, headers);
}

function request(base, method, path, data, headers)
{
	return new Promise((resolve, reject) => {
		const req = http.request(base + path, {
			method, headers: { ...headers, 'Content-Length': data ? data.length : 0 },
			agent: false,
		}, (res) => {
			const chunks = [];
			res.on('data', (c) => chunks.push(c));
			res.on('end', () => resolve({ status: res.statusCode, headers: res.headers,
				body: Buffer.concat(chunks).toString() }));
		});
		req.on('error', reject);
		req.end(data);
	});
}

// Waits (bounded) for GET /health to answer 200: the endpoint starts
// shortly after CREATE EXTENSION.
async function waitHealthy(base, timeoutMs = 30000)
{
	const until = Date.now() + timeoutMs;
	let last = 'no answer';
	while (Date.now() < until)
	{
		try
		{
			const r = await request(base, 'GET', '/health', null, {});
			if (r.status === 200)
				return;
			last = `${r.status} ${r.body}`;
		}
		catch (e)
		{
			last = e.code || e.message;
		}
		await sleep(100);
	}
	throw new Error(`${base}/health not 200 after ${timeoutMs} ms: ${last}`);
}

// The stored rows whose messageId starts with prefix + '-': Map id -> [{source, type}].
function storedById(prefix)
{
	const out = psql(`SELECT message_id, source, type FROM cdp.events
		WHERE message_id LIKE '${prefix}-%'`);
	const stored = new Map();
	for (const line of out ? out.split('\n') : [])
	{
		const [id, source, type] = line.split('|');
		if (!stored.has(id))
			stored.set(id, []);
		stored.get(id).push({ source, type });
	}
	return stored;
}

module.exports = { psql, sleep, waitInboxEmpty, waitHealthy, post, request, storedById };
