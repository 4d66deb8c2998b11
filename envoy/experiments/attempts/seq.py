#!/usr/bin/env python3
"""usage: seq.py UPSTREAM_LOG [FROM_LINE] -> per request id, the ports (and role) each attempt reached"""
import json, sys
from collections import OrderedDict
reqs = OrderedDict()
for l in open(sys.argv[1]).readlines()[int(sys.argv[2]) - 1 if len(sys.argv) > 2 else 0:]:
    if not l.startswith("{"):
        continue
    d = json.loads(l)
    if d["ev"] != "req":
        continue
    rid = d["headers"].get("x-request-id", "?")[:8]
    reqs.setdefault(rid, []).append("%s:%s(%s)" % (d["wall"], d["port"], d["role"]))
for rid, seq in reqs.items():
    print(rid, " -> ".join(seq))
