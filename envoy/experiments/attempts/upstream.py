#!/usr/bin/env python3
"""Upstream stand-ins. Usage: upstream.py PORT=ROLE [PORT=ROLE ...]
Roles: ok | 500 | 429 | 429ra (429 + retry-after: 2) | sse1 (5 events 1 s apart) | sse2 (5 events
2 s apart) | slow3 (headers after 3 s). A path starting with /r/<role>/ overrides the port's role;
on a "500" port, a path containing fail=429 (fail=429ra) answers 429 (429 + retry-after: 2) instead;
a path containing fail<PORT>=<ROLE> (e.g. ?fail28011=500) gives that port that role.
Logs one JSON line per request (time, port, role, path, headers) to stdout."""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

T0 = time.time()

LOCK = threading.Lock()

def log(**kw):
    now = time.time()
    kw["t"] = round(now - T0, 3)
    kw["wall"] = time.strftime("%H:%M:%S", time.localtime(now)) + ("%.3f" % (now % 1))[1:]
    with LOCK:
        print(json.dumps(kw), flush=True)

def make(port, default_role):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a):
            pass
        def do_GET(self):
            self.handle_any()
        def do_POST(self):
            self.handle_any()
        def handle_any(self):
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
            if "chunked" in (self.headers.get("transfer-encoding") or ""):
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    body += self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        break
            role = default_role
            parts = self.path.split("/")
            if len(parts) > 2 and parts[1] == "r":
                role = parts[2]
            import re
            m = re.search(r"fail%d=(\w+)" % port, self.path)
            if m:
                role = m.group(1)
            elif role == "500" and "fail=429ra" in self.path:
                role = "429ra"
            elif role == "500" and "fail=429" in self.path:
                role = "429"
            log(ev="req", port=port, role=role, method=self.command, path=self.path,
                headers=dict(self.headers.items()), body_len=len(body), body=body[:200].decode("utf-8", "replace"))
            if role in ("ok", "500", "429", "429ra", "slow3"):
                if role == "slow3":
                    time.sleep(3)
                code = {"ok": 200, "500": 500, "429": 429, "429ra": 429, "slow3": 200}[role]
                out = json.dumps({"port": port, "role": role}).encode() + b"\n"
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                if role == "429ra":
                    self.send_header("retry-after", "2")
                self.end_headers()
                self.wfile.write(out)
            elif role in ("sse1", "sse2"):
                gap = 1 if role == "sse1" else 2
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                try:
                    for i in range(5):
                        chunk = f"data: {{\"port\":{port},\"i\":{i}}}\n\n".encode()
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        log(ev="sse_sent", port=port, i=i)
                        if i < 4:
                            time.sleep(gap)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    log(ev="sse_done", port=port)
                except Exception as e:
                    log(ev="sse_broken", port=port, err=repr(e))
            else:
                self.send_response(400)
                self.send_header("content-length", "0")
                self.end_headers()
    return H

for spec in sys.argv[1:]:
    p, role = spec.split("=")
    srv = ThreadingHTTPServer(("127.0.0.1", int(p)), make(int(p), role))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    log(ev="listening", port=int(p), role=role)
threading.Event().wait()
