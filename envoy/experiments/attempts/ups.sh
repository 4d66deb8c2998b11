#!/usr/bin/env bash
# usage: ups.sh UPSTREAM_LOG [FROM_LINE] -> compact view of what the upstream servers received
tail -n +${2:-1} "$1" | python3 -c '
import sys,json
for l in sys.stdin:
    if not l.startswith("{"): continue
    d=json.loads(l)
    if d["ev"]!="req": print(d["wall"], d["ev"], d.get("port"), d.get("i","")); continue
    h={k:v for k,v in d["headers"].items() if k.startswith("x-") and k!="x-forwarded-proto"}
    h["x-request-id"]=h.get("x-request-id","")[:8]
    print(d["wall"], d["port"], d["role"], d["path"], h, "body=%r" % d.get("body", "") if d.get("body") else "")'
