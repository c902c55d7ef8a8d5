-- bench/profile_api.lua: the wrk script of bench/profile_api and
-- bench/computed (see there).
--
--   wrk -s bench/profile_api.lua URL -- AUTH PEOPLE RATE THREADS
--
-- AUTH     the Authorization header's value (Bearer <read key>)
-- PEOPLE   a number N: people user_id:u1 .. user_id:uN; or the path of a file
--          of identifiers, one per line (user_id:...); each request asks for
--          the traits of a random one: GET /v1/profiles/<identifier>/traits
-- RATE     requests per second over all threads, on a fixed schedule (wrk's
--          delay()): each thread sends its next request at its next slot, or
--          at once when it is late; latency is measured from sending, as wrk
--          does
-- THREADS  wrk's -t
--
-- Prints "RESULT name value" lines after wrk's own summary.

local threads = {}

function setup(thread)
	thread:set("tid", #threads + 1)
	table.insert(threads, thread)
end

function init(args)
	n = tonumber(args[2])
	if not n then
		ids = {}
		for line in io.lines(args[2]) do
			if line ~= "" then
				ids[#ids + 1] = line
			end
		end
		n = #ids
	end
	headers = { ["Authorization"] = args[1] }
	statuses = {}
	first_error = nil
	math.randomseed(tid * 7919 + os.time())
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
	interval = 1000 * tonumber(args[4]) / tonumber(args[3])
	next_at = now_ms() + interval * (tid - 1) / tonumber(args[4])
end

function delay()
	local now = now_ms()
	next_at = next_at + interval
	if next_at < now - 1000 then
		next_at = now	-- over a second behind: do not burst to catch up
	end
	return math.max(0, math.floor(next_at - now))
end

function request()
	local k = math.random(1, n)
	local id = ids and ids[k] or ("user_id:u" .. k)
	return wrk.format("GET", "/v1/profiles/" .. id .. "/traits", headers)
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
		for status, k in pairs(t:get("statuses")) do
			if status == 200 then
				ok = ok + k
			else
				other = other + k
				detail[status] = (detail[status] or 0) + k
			end
		end
		err = err or t:get("first_error")
	end
	local secs = summary.duration / 1e6
	local e = summary.errors
	local codes = {}
	for status, k in pairs(detail) do
		codes[#codes + 1] = status .. "x" .. k
	end
	table.sort(codes)
	print(string.format("RESULT seconds %.3f", secs))
	print(string.format("RESULT requests %d", summary.requests))
	print(string.format("RESULT requests_per_s %.1f", summary.requests / secs))
	print(string.format("RESULT ok %d", ok))
	print(string.format("RESULT non200 %d", other))
	print(string.format("RESULT non200_codes %s", #codes > 0 and table.concat(codes, ",") or "-"))
	print(string.format("RESULT socket_errors %d", e.connect + e.read + e.write + e.timeout))
	print(string.format("RESULT p50_ms %.2f", latency:percentile(50) / 1000))
	print(string.format("RESULT p99_ms %.2f", latency:percentile(99) / 1000))
	print(string.format("RESULT max_ms %.2f", latency.max / 1000))
	print("RESULT first_error " .. (err or "-"))
end
