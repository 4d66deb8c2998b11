#!/usr/bin/env bash
# Q7 matrix against whichever q7 config is running on :28080; upstream log in logs/$1.upstream.log
B=127.0.0.1:28080
F500="fail28031=500&fail28032=500"; F429="fail28031=429&fail28032=429"; SLOW="fail28031=slow3&fail28032=slow3"
c() { local label=$1; shift; curl -s -o /dev/null -m 10 -w "$label: %{http_code} attempts=%header{x-envoy-attempt-count} flags=%header{x-flags} time=%{time_total}s\n" "$@"; }
c "baseline 500, no knobs          " "$B/base?$F500"
c "route  max-retries=2 retry-on=5xx" "$B/route-retry?$F500"
c "lua    max-retries=2 retry-on=5xx" -H "x-lua-set: x-envoy-max-retries=2;x-envoy-retry-on=5xx" "$B/lua?$F500"
c "client max-retries=2 retry-on=5xx" -H "x-envoy-max-retries: 2" -H "x-envoy-retry-on: 5xx" "$B/client?$F500"
c "route  rsc 429                   " "$B/route-rsc?$F429"
c "lua    rsc 429                   " -H "x-lua-set: x-envoy-max-retries=2;x-envoy-retry-on=retriable-status-codes;x-envoy-retriable-status-codes=429" "$B/lua-rsc?$F429"
c "client rsc 429                   " -H "x-envoy-max-retries: 2" -H "x-envoy-retry-on: retriable-status-codes" -H "x-envoy-retriable-status-codes: 429" "$B/client-rsc?$F429"
c "baseline slow3 (route timeout 15s)" "$B/base-slow?$SLOW"
c "route  rq-timeout 1000           " "$B/route-timeout?$SLOW"
c "lua    rq-timeout 1000           " -H "x-lua-set: x-envoy-upstream-rq-timeout-ms=1000" "$B/lua-timeout?$SLOW"
c "client rq-timeout 1000           " -H "x-envoy-upstream-rq-timeout-ms: 1000" "$B/client-timeout?$SLOW"
c "route  per-try 500 +1 retry      " "$B/route-pertry?$SLOW"
c "lua    per-try 500 +1 retry      " -H "x-lua-set: x-envoy-max-retries=1;x-envoy-retry-on=5xx;x-envoy-upstream-rq-per-try-timeout-ms=500" "$B/lua-pertry?$SLOW"
c "client per-try 500 +1 retry      " -H "x-envoy-max-retries: 1" -H "x-envoy-retry-on: 5xx" -H "x-envoy-upstream-rq-per-try-timeout-ms: 500" "$B/client-pertry?$SLOW"
