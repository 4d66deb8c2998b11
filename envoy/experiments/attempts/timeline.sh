#!/usr/bin/env bash
# usage: timeline.sh URL SECONDS [GAP] -> one request every GAP s (0.25), prints t, status, upstream host, flags
end=$(( $(date +%s%N) + $2 * 1000000000 )); t0=$(date +%s%N)
while [ $(date +%s%N) -lt $end ]; do
  now=$(date +%s%N)
  curl -s -o /dev/null -m 5 -w "t=$(( (now - t0) / 1000000 ))ms %{http_code} host=%header{x-upstream-host} flags=%header{x-flags}\n" "$1"
  sleep ${3:-0.25}
done
