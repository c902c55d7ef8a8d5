#!/usr/bin/env node
// Sends events to a pg_cdp HTTP endpoint through a real SDK, unmodified
// (Segment's @segment/analytics-node or RudderStack's rudder-sdk-node), and
// records what it sent, so a test can check that every messageId was stored
// exactly once.  The SDKs are set up only through their documented options
// (batch size, flush interval, retries, RudderStack's axiosInstance), and
// their traffic is only observed (request and response hooks), never changed.
//
//   node send.js --sdk segment|rudder --url http://127.0.0.1:PORT --key KEY
//       --prefix ID_PREFIX --count N [--ids-out FILE] [--flush-at N]
//       [--per-tick N --tick-ms MS] [--until-file FILE --max N]
//       [--retries N] [--deadline-s S] [--big-every N]
//
// Without --until-file it sends --count events; with it, it sends at least
// --count and goes on (paced) until FILE exists or --max events are sent.
// It then flushes, waits for every event's delivery callback and prints a
// JSON summary.  Exit code 0 only when every event was acknowledged.
'use strict';

const fs = require('fs');
const { makeEvent } = require('./events');

function parseArgs(argv)
{
	const opts = {
		sdk: null, url: null, key: null, prefix: null, count: 1000, max: null,
		idsOut: null, flushAt: null, perTick: 0, tickMs: 100, untilFile: null,
		retries: null, deadlineS: 120, bigEvery: 0,
	};
	for (let i = 2; i < argv.length; i += 2)
	{
		const name = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (m, c) => c.toUpperCase());
		if (!(name in opts))
			throw new Error(`unknown option ${argv[i]}`);
		const v = argv[i + 1];
		opts[name] = typeof opts[name] === 'number' || (opts[name] === null &&
			['max', 'flushAt', 'retries'].includes(name)) ? Number(v) : v;
	}
	for (const req of ['sdk', 'url', 'key', 'prefix'])
		if (!opts[req])
			throw new Error(`--${req} is required`);
	if (opts.max === null)
		opts.max = opts.count;
	return opts;
}

// One SDK client with the hooks that count its attempts; send(method, msg,
// cb) and flush() hide the two SDKs' small API differences.
function makeClient(opts, stats)
{
	if (opts.sdk === 'segment')
	{
		const { Analytics } = require('@segment/analytics-node');
		const settings = { writeKey: opts.key, host: opts.url, path: '/v1/batch' };
		if (opts.flushAt)
			settings.flushAt = opts.flushAt;
		if (opts.retries !== null)
			settings.maxRetries = opts.retries;
		settings.flushInterval = 200;
		const client = new Analytics(settings);
		client.on('http_request', (r) => {
			stats.requests++;
			if (r.headers['X-Retry-Count'])
				stats.retries++;
			if (r.headers.Authorization && r.headers.Authorization.startsWith('Basic '))
				stats.basicAuth++;
			if (JSON.parse(r.body).writeKey === opts.key)
				stats.bodyWriteKey++;
		});
		client.on('http_response', (r) => {
			stats.status[r.status] = (stats.status[r.status] || 0) + 1;
		});
		client.on('error', () => {});
		let closing = null;
		return {
			send: (method, msg, cb) => client[method](msg, (err) => cb(err)),
			flush: () => (closing = closing ||
				client.closeAndFlush({ timeout: opts.deadlineS * 1000 })),
		};
	}
	if (opts.sdk === 'rudder')
	{
		const Analytics = require('@rudderstack/rudder-sdk-node');
		const axios = require('axios');
		const axiosInstance = axios.create();
		axiosInstance.interceptors.request.use((config) => {
			stats.requests++;
			if (config['axios-retry'] && config['axios-retry'].retryCount > 0)
				stats.retries++;
			if (config.auth && config.auth.username === opts.key)
				stats.basicAuth++;
			if (String(config.headers['Content-Encoding']) === 'gzip')
				stats.gzip++;
			return config;
		});
		axiosInstance.interceptors.response.use((res) => {
			stats.status[res.status] = (stats.status[res.status] || 0) + 1;
			return res;
		}, (err) => {
			const k = err.response ? err.response.status : (err.code || 'network');
			stats.status[k] = (stats.status[k] || 0) + 1;
			return Promise.reject(err);
		});
		const settings = {
			dataPlaneUrl: opts.url, axiosInstance, logLevel: 'none', flushInterval: 200,
			// without a handler a failed flush is an unhandled rejection
			errorHandler: (err) => { stats.flushErrors.push(String(err && err.message)); },
		};
		if (opts.flushAt)
			settings.flushAt = opts.flushAt;
		if (opts.retries !== null)
			settings.retryCount = opts.retries;
		const client = new Analytics(opts.key, settings);
		return {
			send: (method, msg, cb) => client[method](msg, (err) => cb(err)),
			flush: () => client.flush(),
		};
	}
	throw new Error(`unknown --sdk ${opts.sdk}`);
}

async function main()
{
	const opts = parseArgs(process.argv);
	const stats = {
		sdk: opts.sdk, sent: 0, acked: 0, failed: 0, requests: 0, retries: 0,
		basicAuth: 0, bodyWriteKey: 0, gzip: 0, status: {}, flushErrors: [], errors: [],
	};
	const client = makeClient(opts, stats);
	const ids = [];
	let pending = 0;
	let resolveAll;
	const allDone = new Promise((r) => { resolveAll = r; });
	let sendingDone = false;

	const onDone = (err) => {
		pending--;
		if (err)
		{
			stats.failed++;
			if (stats.errors.length < 10)
				stats.errors.push(String(err && err.message ? err.message : err));
		}
		else
			stats.acked++;
		if (sendingDone && pending === 0)
			resolveAll();
	};
	const sendOne = () => {
		const i = stats.sent;
		const { method, msg, type } = makeEvent(opts.sdk, opts.prefix, i, opts.bigEvery);
		ids.push(`${msg.messageId}\t${type}`);
		stats.sent++;
		pending++;
		client.send(method, msg, onDone);
	};
	const keepGoing = () => stats.sent < opts.count ||
		(opts.untilFile && !fs.existsSync(opts.untilFile) && stats.sent < opts.max);

	const deadline = setTimeout(() => {
		stats.timedOut = true;
		finish(3);
	}, opts.deadlineS * 1000);

	while (keepGoing())
	{
		const n = opts.perTick > 0 ? opts.perTick : opts.max;
		for (let k = 0; k < n && keepGoing(); k++)
			sendOne();
		if (opts.perTick > 0)
			await new Promise((r) => setTimeout(r, opts.tickMs));
	}
	sendingDone = true;
	stats.stoppedBy = stats.sent >= opts.max ? 'max' :
		(opts.untilFile && fs.existsSync(opts.untilFile) ? 'file' : 'count');
	// rudder-sdk-node's flush() sends one batch: repeat until every
	// callback has come (a no-op for Segment's closeAndFlush after the first)
	let finished = pending === 0;
	allDone.then(() => { finished = true; });
	while (!finished)
	{
		await client.flush();
		await Promise.race([allDone, new Promise((r) => setTimeout(r, 50))]);
	}
	clearTimeout(deadline);
	finish(stats.acked === stats.sent && stats.failed === 0 ? 0 : 1);

	function finish(code)
	{
		if (opts.idsOut)
			fs.writeFileSync(opts.idsOut, ids.join('\n') + '\n');
		process.stdout.write(JSON.stringify(stats) + '\n');
		process.exit(code);
	}
}

main().catch((err) => {
	process.stderr.write(`send.js: ${err.stack || err}\n`);
	process.exit(2);
});
