#!/bin/bash
# run.sh ROUNDS SECONDS: alternate front-$VARIANT.yaml (default "bare apm") in front of the same
# direct_response upstream; Envoy CPU per request from /proc utime+stime. Run from this directory.
E=${ENVOY_BIN:-$(ls -d ../../../../.venv/lib/*/site-packages/envoy/_bin/envoy)}
HZ=$(getconf CLK_TCK)
$E -c upstream-direct.yaml --concurrency 1 --disable-hot-restart -l error > up.log 2>&1 & UP=$!
sleep 2
for r in $(seq 1 $1); do
  for v in ${VARIANTS:-bare apm}; do
    $E -c front-$v.yaml --concurrency 1 --disable-hot-restart -l error > front-$v.log 2>&1 & FP=$!
    sleep 2
    wrk -t1 -c32 -d2s -s post.lua http://127.0.0.1:18000/v1/chat/completions > /dev/null 2>&1   # warm-up
    t0=$(awk '{print $14+$15}' /proc/$FP/stat)
    out=$(wrk -t1 -c32 -d${2}s -s post.lua http://127.0.0.1:18000/v1/chat/completions)
    t1=$(awk '{print $14+$15}' /proc/$FP/stat)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $4}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '/Latency/ {print $2}')
    rss=$(awk '/VmRSS/ {print $2}' /proc/$FP/status)
    echo "round=$r variant=$v reqs=$reqs non2xx=${non2xx:-0} rps=$rps lat_avg=$p50 cpu_us_per_req=$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/$reqs,1))") rss_kb=$rss load=$(cut -d' ' -f1 /proc/loadavg)"
    kill $FP; wait $FP 2>/dev/null
  done
done
kill $UP
