#!/usr/bin/env bash
# usage: run.sh CONFIG.yaml [PORT=ROLE...]  -> starts upstream.py + envoy (logs in logs/), writes pid files.
# Envoy is kept under a waiting bash parent: it gets SIGTERM when its parent exits (seen here).
set -e
cd "$(dirname "$0")"; mkdir -p logs
ENVOY=$(ls -d /work/main/.venv/lib/*/site-packages/envoy/_bin/envoy)
name=$(basename "$1" .yaml); shift
# configs may say @DIR@ for this directory (dynamic modules need an absolute path)
cfg=logs/$name.run.yaml; sed "s|@DIR@|$PWD|g" $name.yaml > $cfg
if [ $# -gt 0 ]; then setsid nohup python3 -u upstream.py "$@" > logs/$name.upstream.log 2>&1 & echo $! > logs/$name.upstream.pid; fi
setsid nohup bash -c "$ENVOY -c $cfg --base-id 2840 --concurrency 1 -l info --component-log-level wasm:info --log-format '[%H:%M:%S.%e][%n][%l] %v' & echo \$! > logs/$name.envoy.pid; wait" > logs/$name.envoy.log 2>&1 &
for i in $(seq 50); do curl -s -o /dev/null 127.0.0.1:28901/ready && break; sleep 0.2; done
echo "upstream pid $(cat logs/$name.upstream.pid 2>/dev/null) envoy pid $(cat logs/$name.envoy.pid)"
