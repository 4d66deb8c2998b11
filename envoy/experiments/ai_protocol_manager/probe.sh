#!/bin/bash
# probe.sh NAME JSON [path] : send JSON to Envoy, show response and what the upstream received
P=${3:-/v1/chat/completions}
echo "=== $1"
n0=$( (wc -l < requests.jsonl) 2>/dev/null || echo 0)
curl -s -m 15 -D /tmp/h.$$ localhost:18000$P -H 'content-type: application/json' -d "$2" -o /tmp/b.$$
head -1 /tmp/h.$$; grep -i content-type /tmp/h.$$; echo "--- client got:"; cat /tmp/b.$$; echo
n1=$( (wc -l < requests.jsonl) 2>/dev/null || echo 0)
if [ "$n1" != "$n0" ]; then echo "--- upstream got:"; tail -1 requests.jsonl | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["path"], {k:v for k,v in d["headers"].items() if k.lower() in ("anthropic-version","x-api-key","authorization","content-length")}); print(json.dumps(d["body"]))'; else echo "--- nothing upstream"; fi
rm -f /tmp/h.$$ /tmp/b.$$
