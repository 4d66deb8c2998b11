"""Slow clients and large bodies (issue 17): while 2,000 connections trickle their headers and
200 large bodies arrive at once (some over the limit), ordinary requests keep getting 200s in
seconds; the trickling connections are cut off by `request_headers_timeout`, the bodies over the
limit get a JSON 413, and no wasm VM fails. Then the overload manager's limits from
`sluice envoy-config --max-heap-mb/--max-connections`, on an Envoy of their own. Loopback only;
every loop is bounded."""

import asyncio
import json
import random
import re
import socket
import time

import httpx
import pytest

from conftest import NATIVE, Gateway

TRICKLERS = 2000
LARGE_BODIES = 200
OVER_THE_LIMIT = 40             # of LARGE_BODIES
BODY_LIMIT = 1024 * 1024        # conftest's max_request_size_mb: 1
HEADERS_TIMEOUT = 10            # envoy_bootstrap.rs REQUEST_HEADERS_TIMEOUT_SECS
ORDINARY_DEADLINE = 5.0         # seconds an ordinary request may take during the abuse
# A wasm VM that fails (a trap, or an abort) logs this and answers with 503s; the stats that
# would move: a new VM is created in place of a failed one (FAIL_RELOAD's reloads, counted by
# `vm_reload*`), and under FAIL_CLOSED, the default here, the 503s (`wasm_fail_stream`).
VM_FAILURE_LOG = re.compile(r"proxy_on_\w+ failed|Uncaught RuntimeError")
WASM_STATS = (r"^(wasm\.envoy\.wasm\.runtime\.v8\.(created|active)|wasm\.wasm_vm_count|"
              r"wasm\.sluice(_service)?\.vm_reload\w*|http\.sluice\.downstream_rq_5xx)$")


def stats(gw, pattern):
    text = httpx.get(f"{gw.admin}/stats", params={"filter": pattern}, timeout=10).text
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+): (\d+)$", text, re.M)}


def chat_body(size):
    """A valid chat request of exactly `size` bytes."""
    head, tail = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "', b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def request_head(gw, alias, length, extra=""):
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Authorization: Bearer {gw.keys[alias]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


def parse_response(raw: bytes):
    """(status, body) of one HTTP/1.1 response read to EOF (content-length or chunked)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/1.1 ") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, body = out + body[:size], body[size + 2:]
        body = out
    return status, body


class Conn:
    """A raw client socket, read with `sock_recv` (asyncio's StreamReader drops the bytes it has
    buffered when a reset follows them, and Envoy resets a connection it closes while bytes the
    client sent are still unread)."""

    def __init__(self, sock):
        self.sock = sock
        self.data = bytearray()
        self.replied = None  # when the first byte of a reply arrived

    @classmethod
    async def open(cls, gw, attempts=20):
        """A connection to Envoy's listener; the accept backlog may overflow while thousands open."""
        loop = asyncio.get_running_loop()
        for attempt in range(attempts):
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                return cls(sock)
            except OSError:
                sock.close()
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.2)

    async def send(self, data):
        """False once Envoy has closed the connection."""
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
            return True
        except OSError:
            return False

    async def read_until_closed(self, limit=1 << 20):
        loop = asyncio.get_running_loop()
        try:
            while len(self.data) < limit:
                chunk = await loop.sock_recv(self.sock, 65536)
                if not chunk:
                    break
                self.replied = self.replied or time.monotonic()
                self.data += chunk
        except ConnectionResetError:
            pass
        return bytes(self.data)

    def close(self):
        self.sock.close()


async def trickle(gw, index, stall):
    """One slowloris connection: a request whose headers arrive a byte a second (or half of them
    at once, then nothing). Returns (seconds from its first byte until Envoy's reply, until Envoy
    closed the connection, what Envoy sent)."""
    conn = await Conn.open(gw)
    head = request_head(gw, "open", 2, extra=f"X-Slow: {index:05d}{'-' * 40}\r\n")
    first = time.monotonic()
    closed = asyncio.ensure_future(conn.read_until_closed())
    deadline = first + HEADERS_TIMEOUT + 20  # a failing test ends too
    if stall:
        await conn.send(head[: len(head) // 2])
    else:
        for i in range(len(head) - 4):  # never the blank line that ends the headers
            if conn.replied or closed.done() or time.monotonic() > deadline or not await conn.send(head[i:i + 1]):
                break
            await asyncio.wait([closed], timeout=1.0)
    try:
        raw = await asyncio.wait_for(closed, timeout=max(0.1, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raw = bytes(conn.data)
    end = time.monotonic()
    conn.close()
    return (conn.replied or end) - first, end - first, raw


async def large_body(gw, size):
    """One large request on its own connection, sent while its response is read (Envoy answers a
    body over the limit before the client has finished sending it)."""
    conn = await Conn.open(gw)
    closed = asyncio.ensure_future(conn.read_until_closed())
    body = chat_body(size)
    await conn.send(request_head(gw, "open", len(body)) + body)  # False after a 413: Envoy stopped reading
    raw = await asyncio.wait_for(closed, timeout=60)
    conn.close()
    return parse_response(raw)


async def ordinary(gw, until):
    """Ordinary requests, one after another, until `until`: (status, seconds) each."""
    results = []
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < until and len(results) < 200:
            start = time.monotonic()
            r = await client.post(gw.url + "/v1/chat/completions", headers=gw.auth("open"),
                                  json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
            results.append((r.status_code, time.monotonic() - start))
            await asyncio.sleep(0.2)
    return results


async def peak_memory(gw, until):
    """Envoy's largest heap (tcmalloc's, what the overload manager watches) and resident set
    while the abuse runs, in MiB."""
    heap = rss = 0
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            memory = (await client.get(f"{gw.admin}/memory")).json()
            heap = max(heap, int(memory["heap_size"]) - int(memory["pageheap_unmapped"]))
            status = open(f"/proc/{gw.proc.pid}/status").read()
            rss = max(rss, int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024)
            await asyncio.sleep(0.25)
    return heap / 2**20, rss / 2**20


async def abuse(gw):
    start = time.monotonic()
    tricklers = []
    for batch in range(0, TRICKLERS, 100):  # 100 connections at a time, so the backlog keeps up
        tricklers += [asyncio.ensure_future(trickle(gw, i, stall=i % 2 == 1)) for i in range(batch, batch + 100)]
        await asyncio.sleep(0.05)
    opened = time.monotonic() - start
    probes = asyncio.ensure_future(ordinary(gw, until=time.monotonic() + HEADERS_TIMEOUT + 4))
    memory = asyncio.ensure_future(peak_memory(gw, until=time.monotonic() + HEADERS_TIMEOUT + 4))
    await asyncio.sleep(1)
    sizes = [BODY_LIMIT + 64 * 1024 if i < OVER_THE_LIMIT else BODY_LIMIT - 16 * 1024 for i in range(LARGE_BODIES)]
    random.shuffle(sizes)
    bodies = await asyncio.gather(*(large_body(gw, size) for size in sizes))
    bodies_done = time.monotonic() - start
    probes_results = await probes
    trickled = await asyncio.gather(*tricklers)
    return {"opened": opened, "bodies_done": bodies_done, "sizes": sizes, "bodies": bodies,
            "probes": probes_results, "trickled": trickled, "memory": await memory,
            "total": time.monotonic() - start}


def test_slow_clients_and_large_bodies_do_not_starve_ordinary_requests(gw):
    header_timeouts = "http.sluice.downstream_rq_header_timeout"
    before = stats(gw, r"^http\.sluice\.downstream_rq_header_timeout$").get(header_timeouts, 0)
    wasm_before = stats(gw, WASM_STATS)
    log_before = len(gw.log_path.read_text(errors="replace"))

    out = asyncio.run(abuse(gw))

    # Ordinary requests kept working, each within seconds.
    probes = out["probes"]
    latencies = sorted(seconds for _, seconds in probes)
    summary = (f"{len(probes)} ordinary requests: median {latencies[len(latencies) // 2]:.3f} s, "
               f"max {latencies[-1]:.3f} s; tricklers opened in {out['opened']:.1f} s, "
               f"large bodies done at {out['bodies_done']:.1f} s, all done at {out['total']:.1f} s; "
               "Envoy's peak heap {:.0f} MiB, resident {:.0f} MiB".format(*out["memory"]))
    print(summary)
    assert len(probes) >= 24, summary
    assert all(status == 200 for status, _ in probes), probes
    assert latencies[-1] < ORDINARY_DEADLINE, summary

    # Bodies under the limit were served; bodies over it got the 413 in OpenAI's shape.
    for size, (status, body) in zip(out["sizes"], out["bodies"]):
        if size > BODY_LIMIT:
            assert status == 413, (size, status, body[:300])
            error = json.loads(body)["error"]
            assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error", error
        else:
            assert status == 200, (size, status, body[:300])
            assert json.loads(body)["choices"], body[:300]

    # Every trickling connection got a 408 in OpenAI's shape once its headers were late, and was
    # closed by Envoy (which waits up to a second, its delayed_close_timeout, for the client to
    # close first); each is counted as a header timeout.
    replied = sorted(r for r, _, _ in out["trickled"])
    closed = sorted(c for _, c, _ in out["trickled"])
    print(f"tricklers answered after {replied[0]:.2f}-{replied[-1]:.2f} s, closed after "
          f"{closed[0]:.2f}-{closed[-1]:.2f} s (from their first byte)")
    assert HEADERS_TIMEOUT - 0.5 <= replied[0] and replied[-1] < HEADERS_TIMEOUT + 5, (replied[0], replied[-1])
    assert closed[-1] < HEADERS_TIMEOUT + 7, closed[-1]
    for _, _, raw in out["trickled"]:
        status, body = parse_response(raw)
        assert status == 408, raw[:300]
        assert json.loads(body)["error"]["code"] == "request_timeout", body
    after = stats(gw, r"^http\.sluice\.downstream_rq_header_timeout$").get(header_timeouts, 0)
    assert after - before == TRICKLERS

    # No wasm VM failed under the load: none was replaced or reloaded, no request got a 5xx (a
    # failed VM's 503 among them), and Envoy logged no failed wasm call.
    wasm_after = stats(gw, WASM_STATS)
    print(f"wasm and 5xx stats, unchanged: {wasm_after}")
    if NATIVE:
        # No VM in the native build: no request got a 5xx, and the Envoy is alive (a native
        # module that failed would have taken the process down).
        assert list(wasm_after) == ["http.sluice.downstream_rq_5xx"] and wasm_after == wasm_before, wasm_after
        assert gw.proc.poll() is None
    else:
        assert len(wasm_after) >= 12 and wasm_after == wasm_before, (wasm_before, wasm_after)
        assert wasm_after["wasm.envoy.wasm.runtime.v8.active"] >= 1
    log = gw.log_path.read_text(errors="replace")[log_before:]
    assert not VM_FAILURE_LOG.search(log), VM_FAILURE_LOG.search(log)


class LimitedGateway(Gateway):
    """The gateway with `sluice envoy-config --max-heap-mb 1 --max-connections 100`: a heap limit
    far below what Envoy uses at rest, and few connections."""

    MAX_CONNECTIONS = 100

    def cli(self, *args, check=True):
        if args[:1] == ("envoy-config",):
            args = (*args, "--max-heap-mb", "1", "--max-connections", str(self.MAX_CONNECTIONS))
        return super().cli(*args, check=check)


@pytest.fixture
def limited(tmp_path):
    yield from LimitedGateway(tmp_path).serve()


def test_the_overload_manager_sheds_requests_and_connections_over_the_flags_limits(limited):
    gw = limited
    # With a global connection limit configured, Envoy does not warn that it has none.
    assert "no configured limit to the number of allowed active downstream connections" not in gw.log_path.read_text()
    # Over the heap limit, every new request is refused by the overload manager, in OpenAI's shape
    # (once it has measured the heap: it does every 0.25 s).
    active = "overload.envoy.overload_actions.stop_accepting_requests.active"
    deadline = time.time() + 10
    while stats(gw, "^" + re.escape(active) + "$").get(active) != 1 and time.time() < deadline:
        time.sleep(0.1)
    r = gw.post("/v1/chat/completions", "open", {"model": "gpt-4o-mini", "messages": []})
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "gateway_overloaded"
    overload = stats(gw, r"^(overload\.envoy\.overload_actions\.\w+\.active|http\.sluice\.downstream_rq_overload_close)$")
    assert overload["overload.envoy.overload_actions.stop_accepting_requests.active"] == 1, overload
    assert overload["overload.envoy.overload_actions.shrink_heap.active"] == 1, overload
    assert overload["http.sluice.downstream_rq_overload_close"] >= 1, overload

    # Connections over --max-connections are closed as soon as they are accepted; the admin
    # listener, outside the limit, still answers.
    socks = []
    try:
        for _ in range(gw.MAX_CONNECTIONS + 50):
            socks.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        time.sleep(0.5)
        overflow = stats(gw, r"^listener\..*\.downstream_global_cx_overflow$")
        listener = f"listener.127.0.0.1_{gw.port}.downstream_global_cx_overflow"
        assert overflow[listener] >= 50, overflow
        assert httpx.get(f"{gw.admin}/ready", timeout=5).status_code == 200
    finally:
        for s in socks:
            s.close()
