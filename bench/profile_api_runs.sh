# bench/profile_api_runs.sh: the timed runs of the profile API, sourced by
# bench/profile_api and bench/computed (not run by itself).
#
#   H  HTTP    wrk (bench/profile_api.lua) at RATE requests/s on a fixed
#              schedule over CONNECTIONS keep-alive connections:
#              GET /v1/profiles/{identifier}/traits with a read key
#   S  libpq   pgbench -M prepared -R RATE, CONNECTIONS clients, running
#              $work/lookup.sql (the same answer in SQL, written by the caller)
#
# pa_runs SECONDS LUA_ARGS...: after a CHECKPOINT and 2 s of each untimed,
# S then H for SECONDS each; results in $work/S.out and $work/H.out as
# "RESULT name value" lines, read with pa_res S|H name.  The caller sets
# work, URL, RATE, CONNECTIONS, THREADS, PSQL and defines die; LUA_ARGS are
# bench/profile_api.lua's (see there).

# wrk (installed with apt-get when missing), pg_virtualenv, curl and python3;
# name: the calling script's, for its messages
pa_need_tools() {
	local c sudo=""
	if ! command -v wrk >/dev/null; then
		echo "$1: installing wrk ..."
		[ "$(id -u)" -eq 0 ] || sudo="sudo"
		DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null ||
			{ echo "$1: wrk is missing and could not be installed (apt-get install wrk)" >&2; exit 1; }
	fi
	for c in pg_virtualenv curl python3; do
		command -v $c >/dev/null || { echo "$1: $c not found (apt-get install postgresql-common curl python3)" >&2; exit 1; }
	done
}
pa_free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pa_here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
command -v pgbench >/dev/null || PATH="$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin):$PATH"

pa_res() { awk -v k="$2" '$1 == "RESULT" && $2 == k { $1 = ""; $2 = ""; sub(/^ +/, ""); print; exit }' "$work/$1.out"; }

pa_wrk() {	# seconds output lua-args...
	local secs=$1 out=$2
	shift 2
	wrk -t "$THREADS" -c "$CONNECTIONS" -d "${secs}s" --timeout 30s --latency -s "$pa_here/profile_api.lua" "$URL" \
		-- "$@" >"$out" 2>&1 || die "wrk failed: $(tail -5 "$out")"
}

pa_pgbench() {	# db seconds log-prefix output
	(cd "$work" && pgbench -n -M prepared -R "$RATE" -c "$CONNECTIONS" -j "$THREADS" -T "$2" -l --log-prefix="$3" \
		-f "$work/lookup.sql" "$1") >"$4" 2>&1 || die "pgbench failed: $(grep -m3 -i "error\|abort" "$4")"
}

# wait for GET /health to answer (the endpoint starts once its worker found the extension)
pa_wait_health() {
	local i
	for ((i = 0; i < 300; i++)); do
		curl -sf -o /dev/null "$URL/health" && return 0
		sleep 0.1
	done
	die "no HTTP endpoint answers GET $URL/health"
}

pa_runs() {	# db seconds lua-args...
	local db=$1 secs=$2 tx failed http_pid c0
	shift 2
	"${PSQL[@]}" -d "$db" -c "CHECKPOINT"
	echo "warming up (2 s of each path, untimed) ..."
	pa_pgbench "$db" 2 warm.log "$work/warm_s.raw"
	pa_wrk 2 "$work/warm_h.out" "$@"

	echo "S: pgbench, $RATE requests/s for $secs s ..."
	pa_pgbench "$db" "$secs" S.log "$work/S.raw"
	tx=$(awk -F': ' '/^number of transactions actually processed/ { print $2 + 0 }' "$work/S.raw")
	failed=$(awk -F': ' '/^number of failed transactions/ { print $2 + 0 }' "$work/S.raw")
	[ -n "$tx" ] || die "pgbench reported no transactions: $(tail -5 "$work/S.raw")"
	cat "$work"/S.log* | awk '{ print $3 }' | sort -n >"$work/S.lat"
	{
		awk -v t="$tx" -v d="$secs" 'BEGIN { printf "RESULT requests_per_s %.1f\n", t / d }'
		echo "RESULT non200 ${failed:-0}"
		awk '{ v[NR] = $1 } END {
			printf "RESULT p50_ms %.2f\nRESULT p99_ms %.2f\nRESULT max_ms %.2f\n",
				v[int(NR * 0.50) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000, v[NR] / 1000 }' "$work/S.lat"
	} >"$work/S.out"

	echo "H: wrk, $RATE requests/s for $secs s ..."
	# CPU time of the endpoint's one process over the run, in clock ticks (utime + stime)
	http_pid=$("${PSQL[@]}" -At -d "$db" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'")
	c0=$(pa_worker_ticks "$http_pid")
	pa_wrk "$secs" "$work/H.out" "$@"
	grep -q '^RESULT p99_ms' "$work/H.out" || die "wrk printed no result: $(tail -5 "$work/H.out")"
	awk -v a="$c0" -v b="$(pa_worker_ticks "$http_pid")" -v hz="$(getconf CLK_TCK)" -v d="$(pa_res H seconds)" \
		-v r="$(pa_res H requests)" \
		'BEGIN { printf "RESULT worker_cpu %.0f\nRESULT worker_us_per_request %.0f\n", 100 * (b - a) / hz / d, 1e6 * (b - a) / hz / r }' \
		>>"$work/H.out"
}
pa_worker_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# the table of both paths, H/S of p99, the endpoint's CPU and the target
pa_report() {	# label of H, label of S
	printf "%-44s %10s %8s %8s %8s %8s\n" "path" "req/s" "p50 ms" "p99 ms" "max ms" "non-200"
	printf "%-44s %10s %8s %8s %8s %8s\n" "$1" \
		"$(pa_res H requests_per_s)" "$(pa_res H p50_ms)" "$(pa_res H p99_ms)" "$(pa_res H max_ms)" "$(pa_res H non200)"
	printf "%-44s %10s %8s %8s %8s %8s\n" "$2" \
		"$(pa_res S requests_per_s)" "$(pa_res S p50_ms)" "$(pa_res S p99_ms)" "$(pa_res S max_ms)" "$(pa_res S non200)"
	awk -v h="$(pa_res H p99_ms)" -v s="$(pa_res S p99_ms)" 'BEGIN { printf "H/S p99: %.2f\n", (s > 0 ? h / s : 0) }'
	echo "HTTP worker: $(pa_res H worker_cpu)% of a CPU, about $(pa_res H worker_us_per_request) us of CPU per request"
	awk -v h="$(pa_res H p99_ms)" 'BEGIN { printf "target p99 < 5 ms over HTTP: %s\n", (h < 5 ? "met" : "NOT met") }'
	[ "$(pa_res H non200)" = 0 ] || echo "non-200 answers over HTTP: $(pa_res H non200_codes), first: $(pa_res H first_error)"
	[ "$(pa_res H socket_errors)" = 0 ] || echo "socket errors over HTTP: $(pa_res H socket_errors)"
}
