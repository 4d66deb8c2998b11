"""Tiny upstream: records each request (path, headers, body) to requests.jsonl and answers
with canned Anthropic Messages (JSON, SSE), OpenAI Chat Completions, or an error, chosen by
the request body / path. SSE events are sent with a delay between them to see streaming."""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[2] if len(sys.argv) > 2 else "requests.jsonl"
DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3

ANTH_JSON = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [
        {"type": "text", "text": "Paris."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 21, "output_tokens": 7, "cache_read_input_tokens": 100,
              "cache_creation_input_tokens": 50},
}
ANTH_SSE = [
    ("message_start", {"type": "message_start", "message": {"id": "msg_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 21, "output_tokens": 1, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 15}}),
    ("message_stop", {"type": "message_stop"}),
]
ANTH_ERR = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
OAI_JSON = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                      "prompt_tokens_details": {"cached_tokens": 3}}}

GEM_JSON = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Bonjour"}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 4, "totalTokenCount": 20, "cachedContentTokenCount": 6, "thoughtsTokenCount": 4},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"}
GEM_SSE = [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Bon"}]}, "index": 0}], "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}, "modelVersion": "gemini-2.5-flash"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "jour"}]}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 4, "totalTokenCount": 16}, "modelVersion": "gemini-2.5-flash"},
]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        if "chunked" in (self.headers.get("transfer-encoding") or ""):
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size); self.rfile.readline()
        else:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
        try:
            doc = json.loads(body)
        except Exception:
            doc = None
        if LOG != "-":
            with open(LOG, "a") as f:
                f.write(json.dumps({"path": self.path, "headers": dict(self.headers), "body": doc if doc is not None else body.decode("utf-8", "replace")}) + "\n")
        text = json.dumps(doc) if doc is not None else ""
        if "FORCE_ERROR" in text or self.headers.get("x-force-error"):
            return self.send_json(529, ANTH_ERR)
        if ":generateContent" in self.path:
            return self.send_json(200, GEM_JSON)
        if ":streamGenerateContent" in self.path:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for ev in GEM_SSE:
                chunk = ("data: %s\r\n\r\n" % json.dumps(ev)).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)); self.wfile.flush()
                if DELAY: time.sleep(DELAY)
            self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
            return
        if "/chat/completions" in self.path:
            return self.send_json(200, OAI_JSON)
        if isinstance(doc, dict) and doc.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for name, ev in ANTH_SSE:
                chunk = ("event: %s\ndata: %s\n\n" % (name, json.dumps(ev))).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)); self.wfile.flush()
                if DELAY: time.sleep(DELAY)
            self.wfile.write(b"0\r\n\r\n"); self.wfile.flush()
            return
        return self.send_json(200, ANTH_JSON)
    def send_json(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b)))
        self.end_headers(); self.wfile.write(b)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
