#!/usr/bin/env bash
# usage: stop.sh CONFIGNAME  -> kills the envoy and upstream started by run.sh for it
cd "$(dirname "$0")"
for f in logs/$1.envoy.pid logs/$1.upstream.pid; do [ -f $f ] && kill $(cat $f) 2>/dev/null; rm -f $f; done; sleep 0.7
