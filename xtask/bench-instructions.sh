#!/bin/sh
# Instructions per request, counted by valgrind's callgrind: the same count for the same
# binaries and requests whatever else the machine is doing, so two builds can be compared on a
# noisy instance where `cargo xtask bench`'s CPU times cannot tell them apart (BENCHMARKS.md).
#
# Uses the Envoy configs the timed bench wrote: run `cargo xtask bench --quick --no-litellm
# --native-filter target/release/libsluice_filter.so` first, then
#   xtask/bench-instructions.sh [SECONDS] [MODULE.so] [SCENARIO]
# MODULE.so (default: the one the bench config names) is the Sluice build to count, so a
# candidate can be compared with the bench's; SCENARIO is one of the bench's wrk scripts (chat,
# the default; stream; prompt32k; …). Prints, per front Envoy (bare, the no-op native
# module, Sluice native): requests served, Envoy's instructions per request (every thread; the
# ticks and timers of the measured seconds spread over its requests, so compare runs of equal
# length), and the module's hooks' own count per request with the Envoy calls they make
# (independent of the rate).
set -eu
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-20}
MODULE=${2:-}
SCENARIO=${3:-chat}
BENCH=.sluice/bench
ENVOY=${ENVOY_BIN:-$(ls -d .venv/lib/*/site-packages/envoy/_bin/envoy)}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
[ -f "$BENCH/$SCENARIO.lua" ] || { echo "no $BENCH/$SCENARIO.lua" >&2; exit 2; }
[ -f "$BENCH/upstream.yaml" ] || { echo "no $BENCH/upstream.yaml: run cargo xtask bench --quick first" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

"$ENVOY" -c "$BENCH/upstream.yaml" --concurrency 1 --base-id 91 --disable-hot-restart --log-level error >"$OUT/upstream.log" 2>&1 &
sleep 2

port_of() { grep -m1 'port_value' "$1" | sed 's/.*port_value: *\([0-9]*\).*/\1/'; } # the admin's: first in each config
requests() { curl -s "127.0.0.1:$1/stats" | awk -F': ' '/^http\.[a-z_]+\.downstream_rq_total/ && !/admin/ {s += $2} END {print s + 0}'; }

count() { # NAME YAML PORT
    name=$1 yaml=$2 port=$3
    admin=$(port_of "$yaml")
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$name.cg" \
        "$ENVOY" -c "$yaml" --concurrency 1 --base-id 92 --disable-hot-restart --log-level error >"$OUT/$name.log" 2>&1 &
    pid=$!
    i=0
    until curl -s -o /dev/null "127.0.0.1:$admin/ready"; do
        i=$((i + 1)); [ $i -lt 300 ] || { echo "$name: Envoy did not start" >&2; exit 1; }; sleep 1
    done
    callgrind_control -i on $pid >/dev/null 2>&1
    wrk -t1 -c4 -d5s -s "$BENCH/$SCENARIO.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null # warm-up
    callgrind_control -z $pid >/dev/null 2>&1
    before=$(requests "$admin")
    wrk -t1 -c4 -d"${SECONDS_PER_RUN}s" -s "$BENCH/$SCENARIO.lua" "http://127.0.0.1:$port/v1/chat/completions" >"$OUT/$name.wrk"
    served=$(($(requests "$admin") - before))
    callgrind_control -d $pid >/dev/null 2>&1
    kill $pid; wait $pid 2>/dev/null || true
    if grep -q 'Non-2xx' "$OUT/$name.wrk"; then echo "$name: some answers were not 2xx" >&2; exit 1; fi
    dump=$(ls "$OUT/$name.cg".* | head -1)
    total=$(awk '/^summary:/ {print $2; exit}' "$dump")
    hooks=$(callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
        awk '/envoy_dynamic_module_on_http_filter_(new|destroy|request_headers|request_body|response_headers|response_body|stream_complete) \[/ {gsub(",", "", $1); s += $1} END {print s + 0}')
    echo "$name: $served requests, $((total / served)) instructions per request, hooks $((hooks / served))"
}

# The bench's listeners: 18100 bare, 18102 the no-op native module, 18104 Sluice native.
count bare "$BENCH/envoy-18100.yaml" 18100
count noop-native "$BENCH/envoy-18102.yaml" 18102
yaml="$BENCH/envoy-18104.yaml"
if [ -n "$MODULE" ]; then
    sed "s#filename: .*libsluice_filter.so#filename: $(realpath "$MODULE")#" "$yaml" >"$OUT/sluice.yaml"
    yaml="$OUT/sluice.yaml"
fi
count sluice-native "$yaml" 18104
