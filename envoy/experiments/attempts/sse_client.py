#!/usr/bin/env python3
"""usage: sse_client.py URL -> prints status, headers of interest, each chunk's arrival time, and how it ended"""
import sys, time, http.client, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
t0 = time.time()
ts = lambda: "%5.2fs" % (time.time() - t0)
c = http.client.HTTPConnection(u.hostname, u.port, timeout=40)
c.request("GET", u.path + ("?" + u.query if u.query else ""))
r = c.getresponse()
print(ts(), "status", r.status, "attempts=%s" % r.getheader("x-envoy-attempt-count"), "ctype=%s" % r.getheader("content-type"))
if r.getheader("content-length") is not None:
    print(ts(), "body", repr(r.read()), "details=%s" % r.getheader("x-envoy-response-flags"))
    sys.exit(0)
try:
    while True:
        line = r.fp.readline()
        if not line:
            print(ts(), "EOF (connection closed)")
            break
        s = line.decode(errors="replace").strip()
        if s and not all(ch in "0123456789abcdef" for ch in s):
            print(ts(), "got", repr(s))
        if s == "0":
            print(ts(), "clean end (last chunk)")
            break
except Exception as e:
    print(ts(), "error", repr(e))
