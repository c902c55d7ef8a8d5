#!/usr/bin/env bash
# `make fuzz-http`: replay the seed corpus (each file a regression input),
# show that the harness's checks abort on a damaged result, then fuzz for
# FUZZ_SECONDS.  A crash leaves its input in test/fuzz/build/crash-*; replay
# it with `test/fuzz/build/http_request_fuzz <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzzer=${1:-test/fuzz/build/http_request_fuzz}
seconds=${FUZZ_SECONDS:-20}
seed=${FUZZ_SEED:-1}
seeds=test/fuzz/http_corpus
work=test/fuzz/build/http_corpus
mkdir -p "$work"
# a smaller quarantine than ASan's 256 MB keeps the run near 200 MB on a shared machine
export ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=64}

echo "replaying $(ls "$seeds" | wc -l) seed inputs"
"$fuzzer" -artifact_prefix=test/fuzz/build/ "$seeds"/* >test/fuzz/build/replay.log 2>&1 ||
  { tail -40 test/fuzz/build/replay.log; echo "a seed input fails"; exit 1; }

# the checks must notice a payload longer than the limits allow
if CDP_HTTPFUZZ_SABOTAGE=1 "$fuzzer" -artifact_prefix=test/fuzz/build/sabotage- \
     "$seeds"/node_batch_basic >test/fuzz/build/sabotage.log 2>&1 ||
   ! grep -q "invariant broken" test/fuzz/build/sabotage.log; then
  cat test/fuzz/build/sabotage.log
  echo "the harness did not abort on a damaged result"
  exit 1
fi
rm -f test/fuzz/build/sabotage-*

echo "fuzzing for ${seconds} s (seed ${seed})"
"$fuzzer" -seed="$seed" -max_total_time="$seconds" -max_len=65536 -timeout=5 \
  -dict=test/fuzz/http.dict \
  -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=test/fuzz/build/ \
  "$work" "$seeds" 2>test/fuzz/build/fuzz.log ||
  { tail -60 test/fuzz/build/fuzz.log; exit 1; }
grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" test/fuzz/build/fuzz.log || true
