-- bench/http.lua: the wrk script of bench/http (see there).
--
--   wrk -s bench/http.lua URL -- PATH AUTH TEMPLATES EVENTS TAG [RATE THREADS]
--
-- PATH       where to POST (/v1/batch, /v1/track)
-- AUTH       the Authorization header's value (Basic base64(writeKey:))
-- TEMPLATES  comma-separated files, one JSON body each, with "@R@" where a
--            request-unique tag goes (in every messageId, and in the
--            anonymousId of new visitors); requests take them in turn
-- EVENTS     events per request (accepted events = 200 responses x EVENTS)
-- TAG        unique per run, so message ids never repeat across runs
-- RATE       optional: requests per second over all threads, on a fixed
--            schedule (wrk's delay()): each thread sends its next request at
--            its next slot, or at once when it is late; latency is measured
--            from sending, as wrk does
-- THREADS    wrk's -t, needed with RATE
--
-- Prints "RESULT name value" lines after wrk's own summary.

local threads = {}

function setup(thread)
	thread:set("tid", #threads + 1)
	table.insert(threads, thread)
end

-- A template as pieces, with the slots the tag goes into.
local function load_template(file)
	local f = assert(io.open(file, "rb"))
	local s = f:read("*a"):gsub("%s+$", "")
	f:close()
	local pieces, slots, pos = {}, {}, 1
	while true do
		local a, b = s:find("@R@", pos, true)
		if not a then
			pieces[#pieces + 1] = s:sub(pos)
			break
		end
		pieces[#pieces + 1] = s:sub(pos, a - 1)
		pieces[#pieces + 1] = ""
		slots[#slots + 1] = #pieces
		pos = b + 1
	end
	assert(#slots > 0, file .. " has no @R@ slot")
	return { pieces = pieces, slots = slots }
end

function init(args)
	path, auth, events, tag = args[1], args[2], tonumber(args[4]), args[5]
	templates = {}
	for file in args[3]:gmatch("[^,]+") do
		templates[#templates + 1] = load_template(file)
	end
	headers = {
		["Authorization"] = auth,
		["Content-Type"] = "application/json",
		["User-Agent"] = "analytics-node-next/latest (bench/http)",
	}
	sent = 0
	statuses = {}
	first_error = nil
	if args[6] then
		local ffi = require("ffi")
		ffi.cdef [[
			typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
			int clock_gettime(int clk, bench_timespec *ts);
		]]
		local ts = ffi.new("bench_timespec")
		now_ms = function()
			ffi.C.clock_gettime(1, ts)	-- CLOCK_MONOTONIC
			return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
		end
		-- each thread's share of the rate; threads start half a slot apart
		interval = 1000 * tonumber(args[7]) / tonumber(args[6])
		next_at = now_ms() + interval * (tid - 1) / tonumber(args[7])
		delay = function()
			local now = now_ms()
			next_at = next_at + interval
			if next_at < now - 1000 then
				next_at = now	-- over a second behind: do not burst to catch up
			end
			return math.max(0, math.floor(next_at - now))
		end
	end
end

function request()
	sent = sent + 1
	local t = templates[sent % #templates + 1]
	local id = tag .. "-" .. tid .. "-" .. sent
	for _, i in ipairs(t.slots) do
		t.pieces[i] = id
	end
	return wrk.format("POST", path, headers, table.concat(t.pieces))
end

function response(status, hdrs, body)
	statuses[status] = (statuses[status] or 0) + 1
	if status ~= 200 and not first_error then
		first_error = status .. " " .. body:sub(1, 300):gsub("%s+", " ")
	end
end

function done(summary, latency, requests)
	local ok, other, detail, err = 0, 0, {}, nil
	for _, t in ipairs(threads) do
		for status, n in pairs(t:get("statuses")) do
			if status == 200 then
				ok = ok + n
			else
				other = other + n
				detail[status] = (detail[status] or 0) + n
			end
		end
		err = err or t:get("first_error")
	end
	local events = tonumber(threads[1]:get("events"))
	local secs = summary.duration / 1e6
	local e = summary.errors
	local codes = {}
	for status, n in pairs(detail) do
		codes[#codes + 1] = status .. "x" .. n
	end
	table.sort(codes)
	print(string.format("RESULT seconds %.3f", secs))
	print(string.format("RESULT requests %d", summary.requests))
	print(string.format("RESULT ok %d", ok))
	print(string.format("RESULT events %d", ok * events))
	print(string.format("RESULT events_per_s %.0f", ok * events / secs))
	print(string.format("RESULT requests_per_s %.1f", summary.requests / secs))
	print(string.format("RESULT non200 %d", other))
	print(string.format("RESULT non200_codes %s", #codes > 0 and table.concat(codes, ",") or "-"))
	print(string.format("RESULT socket_errors %d", e.connect + e.read + e.write + e.timeout))
	print(string.format("RESULT socket_detail connect=%d,read=%d,write=%d,timeout=%d",
		e.connect, e.read, e.write, e.timeout))
	print(string.format("RESULT p50_ms %.2f", latency:percentile(50) / 1000))
	print(string.format("RESULT p99_ms %.2f", latency:percentile(99) / 1000))
	print(string.format("RESULT max_ms %.2f", latency.max / 1000))
	print("RESULT first_error " .. (err or "-"))
end
