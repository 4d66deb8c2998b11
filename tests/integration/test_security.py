"""Credentials never leak; hostile input never traps the filter."""

import json
import re
import socket

import httpx
import pytest

from wasm_stats import assert_no_vm_failed


def raw_request(gw, header_lines: bytes, body: bytes = b'{"model":"gpt-4o"}') -> int:
    """Sends bytes as they are (clients refuse to send some of these) and returns the status."""
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           + header_lines + b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(req)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else 0


def test_the_upstream_sees_the_provider_key_never_the_clients(gw):
    r = gw.post("/v1/chat/completions", "security", {"model": "gpt-4o", "messages": []},
                headers={"x-api-key": "also-the-client", "api-key": "and-this"})
    assert r.status_code == 200
    seen = gw.mock_stats()["requests"][-1]
    assert seen["authorization"] == f"Bearer {gw.provider_keys['MOCK_OPENAI_KEY']}"
    assert seen["x_api_key"] is None and seen["api_key"] is None
    assert r.headers.get("x-request-id")


def test_an_anthropic_upstream_sees_only_the_provider_key(gw):
    r = gw.post("/v1/messages", "security", {"model": "claude-3-5-sonnet", "max_tokens": 5, "messages": []},
                headers={"api-key": "also-the-client", "accept-encoding": "gzip"})
    assert r.status_code == 200
    seen = gw.mock_stats()["requests"][-1]
    assert seen["x_api_key"] == gw.provider_keys["MOCK_ANTHROPIC_KEY"]
    assert seen["authorization"] is None and seen["api_key"] is None
    assert seen["accept_encoding"] is None, "the gateway meters plain responses"


def test_hostile_authorization_values_get_401_and_no_trap(gw):
    cases = {
        "sql": b"authorization: Bearer ' OR 1=1; DROP TABLE keys; --\r\n",
        "invalid utf-8": b"authorization: Bearer sk-sluice-\xff\xfe\xfd\r\n",
        "almost a key": b"authorization: Bearer sk-sluice-" + b"A" * 38 + b"\r\n",
        "8 KB": b"authorization: Bearer " + b"k" * 8192 + b"\r\n",
        "empty": b"authorization: \r\n",
        "basic": b"authorization: Basic dXNlcjpwYXNz\r\n",
    }
    for name, header in cases.items():
        assert raw_request(gw, header) == 401, name
    # Envoy's codec refuses these before any filter runs: a clear 4xx, never a 5xx.
    assert 400 <= raw_request(gw, b"authorization: Bearer sk-\x00sluice\r\n") < 500
    assert 400 <= raw_request(gw, b"authorization: Bearer " + b"k" * 65536 + b"\r\n") < 500
    # Still serving, and no VM failed.
    assert gw.post("/v1/chat/completions", "security", {"model": "gpt-4o"}).status_code == 200
    assert_no_vm_failed(gw)


def test_a_client_cannot_pick_the_cluster(gw):
    r = gw.post("/v1/chat/completions", "security", {"model": "gpt-4o-mini"},
                headers={"x-sluice-cluster": "sluice_dead"})
    assert r.status_code == 200
    assert r.json()["model"] == "gpt-4o-mini"


def test_no_secret_in_config_dump_or_logs(gw):
    dump = httpx.get(f"{gw.admin}/config_dump", timeout=10).text
    log = gw.log_path.read_text(errors="replace")
    secrets = [*gw.provider_keys.values(), gw.master_key, *gw.keys.values()]
    for secret in secrets:
        assert secret not in dump
        assert secret not in log
    assert "MOCK_OPENAI_KEY" in dump  # only the variable's name is configured


def test_admin_is_loopback_only(gw):
    listeners = httpx.get(f"{gw.admin}/listeners?format=json", timeout=5).text
    assert "127.0.0.1" in listeners
    yaml = gw.envoy_yaml.read_text()
    admin_block = yaml[yaml.index("admin:"):yaml.index("admin:") + 200]
    assert "127.0.0.1" in admin_block


# -- Hostile headers that Envoy lets through to the filter ------------------------------------
# Envoy's limits here are its defaults (the bootstrap sets neither): 60 KiB of request headers
# (`max_request_headers_kb`) and 100 headers (`max_headers_count`); 95 extra headers get Envoy's
# own 431 before any filter runs. Everything below is within them, so the filter sees it.

CHAT = b'{"model":"gpt-4o","messages":[]}'
HIGH_BYTES = bytes(range(0x80, 0x100))
MANY = b"".join(b"x-hostile-%d: v\r\n" % i for i in range(90))


def exchange(gw, header_lines: bytes, body: bytes = CHAT):
    """One raw HTTP/1.1 request (bytes as they are); (status, lower-cased headers, body).

    Reads exactly the response (content-length or chunks), not up to the close: after a local
    reply Envoy may hold the connection for its delayed-close timeout (1 s)."""
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           + header_lines + b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(req)
        data = b""

        def complete():
            head, sep, payload = data.partition(b"\r\n\r\n")
            if not sep:
                return False
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if length:
                return len(payload) >= int(length.group(1))
            return payload.endswith(b"0\r\n\r\n")  # chunked

        while not complete() and (chunk := s.recv(65536)):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    if headers.get("transfer-encoding") == "chunked":
        chunks, rest = b"", payload
        while (size := int(rest.split(b"\r\n", 1)[0], 16)) > 0:
            rest = rest.split(b"\r\n", 1)[1]
            chunks, rest = chunks + rest[:size], rest[size + 2:]
        payload = chunks
    return int(lines[0].split(" ")[1]), headers, payload


# (case, header lines given the `security` key and the `open` key, expected outcome): 200, or the
# OpenAI error code of a 401.
HOSTILE_HEADERS = [
    # Very long values, within the bootstrap's 32 KiB of headers (max_request_headers_kb).
    ("24 KiB bearer token", lambda k, o: b"authorization: Bearer " + b"k" * 24576, "invalid_api_key"),
    ("24 KiB x-api-key", lambda k, o: b"x-api-key: " + b"k" * 24576, "invalid_api_key"),
    ("a valid key then 24 KiB of spaces", lambda k, o: b"authorization: Bearer " + k + b" " * 24576, 200),
    ("a 24 KiB header beside a valid key", lambda k, o: b"authorization: Bearer " + k + b"\r\nx-junk: "
     + b"j" * 24576, 200),
    # Bytes 0x80-0xFF (obs-text: Envoy passes them, they are not UTF-8).
    ("bytes 0x80-0xff as the bearer token", lambda k, o: b"authorization: Bearer " + HIGH_BYTES, "invalid_api_key"),
    ("bytes 0x80-0xff as x-api-key", lambda k, o: b"x-api-key: " + HIGH_BYTES, "invalid_api_key"),
    ("bytes 0x80-0xff after a valid key", lambda k, o: b"authorization: Bearer " + k + HIGH_BYTES, "invalid_api_key"),
    ("bytes 0x80-0xff in a header beside a valid key", lambda k, o: b"authorization: Bearer " + k
     + b"\r\nx-junk: " + HIGH_BYTES, 200),
    # Many headers.
    ("90 headers beside a valid key", lambda k, o: MANY + b"authorization: Bearer " + k, 200),
    ("90 headers and no key", lambda k, o: MANY.rstrip(b"\r\n"), "missing_api_key"),
    ("one header 90 times beside a valid key", lambda k, o: b"x-same: v\r\n" * 90 + b"authorization: Bearer " + k, 200),
    # Repeated credentials. Envoy joins a repeated Authorization with a comma, so two are never
    # a key, whichever they are; a repeated x-api-key or api-key reaches the filter as its first
    # value (the upstream sees none of them either way).
    ("Authorization twice, the same valid key", lambda k, o: b"authorization: Bearer " + k
     + b"\r\nauthorization: Bearer " + k, "invalid_api_key"),
    ("Authorization twice, valid then bogus", lambda k, o: b"authorization: Bearer " + k
     + b"\r\nauthorization: Bearer sk-bogus", "invalid_api_key"),
    ("Authorization twice, bogus then valid", lambda k, o: b"authorization: Bearer sk-bogus\r\nauthorization: Bearer "
     + k, "invalid_api_key"),
    ("Authorization twice, two valid keys", lambda k, o: b"authorization: Bearer " + k
     + b"\r\nauthorization: Bearer " + o, "invalid_api_key"),
    ("x-api-key twice, the same valid key", lambda k, o: b"x-api-key: " + k + b"\r\nx-api-key: " + k, 200),
    ("x-api-key twice, bogus first", lambda k, o: b"x-api-key: sk-bogus\r\nx-api-key: " + k, "invalid_api_key"),
    ("x-api-key twice, valid first", lambda k, o: b"x-api-key: " + k + b"\r\nx-api-key: sk-bogus", 200),
    # `Bearer` and whitespace: the scheme is case-insensitive and needs a space (RFC 9110 §11.4:
    # one or more SP, no tab); whitespace around the token does not count.
    ("Bearer, a tab, the key", lambda k, o: b"authorization: Bearer\t" + k, "missing_api_key"),
    ("Bearer glued to the key", lambda k, o: b"authorization: Bearer" + k, "missing_api_key"),
    ("Bearer, three spaces, the key", lambda k, o: b"authorization: Bearer   " + k, 200),
    ("Bearer, the key, tabs", lambda k, o: b"authorization: Bearer " + k + b"\t\t", 200),
    ("spaces and a tab before Bearer", lambda k, o: b"authorization:  \t Bearer " + k, 200),
    ("lower-case bearer", lambda k, o: b"authorization: bearer " + k, 200),
    ("a tab inside the key", lambda k, o: b"authorization: Bearer " + k[:12] + b"\t" + k[12:], "invalid_api_key"),
    # Both x-api-key and Authorization: a Bearer credential is the one that counts.
    ("valid x-api-key, bogus Bearer", lambda k, o: b"x-api-key: " + k + b"\r\nauthorization: Bearer sk-bogus",
     "invalid_api_key"),
    ("bogus x-api-key, valid Bearer", lambda k, o: b"x-api-key: sk-bogus\r\nauthorization: Bearer " + k, 200),
    ("valid x-api-key, Basic authorization", lambda k, o: b"x-api-key: " + k
     + b"\r\nauthorization: Basic dXNlcjpwYXNz", 200),
    ("valid x-api-key, another valid Bearer", lambda k, o: b"x-api-key: " + o + b"\r\nauthorization: Bearer " + k, 200),
    # Empty values.
    ("empty authorization", lambda k, o: b"authorization:", "missing_api_key"),
    ("Bearer and nothing", lambda k, o: b"authorization: Bearer    ", "missing_api_key"),
    ("empty x-api-key", lambda k, o: b"x-api-key:", "missing_api_key"),
    ("empty x-api-key and api-key, valid Bearer", lambda k, o: b"x-api-key:\r\napi-key:\r\nauthorization: Bearer " + k,
     200),
    ("valid x-api-key, empty authorization", lambda k, o: b"authorization:\r\nx-api-key: " + k, 200),
    ("empty headers beside a valid key", lambda k, o: b"x-junk:\r\naccept:\r\nauthorization: Bearer " + k, 200),
]


@pytest.mark.parametrize("lines,expected", [pytest.param(f, e, id=name) for name, f, e in HOSTILE_HEADERS])
def test_hostile_headers_reach_the_filter_and_get_a_defined_answer(gw, lines, expected):
    def upstream_calls():
        return sum(gw.mock_stats()["by_path"].values())

    before = upstream_calls()
    status, headers, body = exchange(gw, lines(gw.keys["security"].encode(), gw.keys["open"].encode()) + b"\r\n")
    if expected == 200:
        assert status == 200, body[:300]
        assert json.loads(body)["usage"]["total_tokens"] > 0
        # Whatever the client sent, the upstream saw the provider's key and nothing of the client's.
        assert upstream_calls() == before + 1
        seen = gw.mock_stats()["requests"][-1]
        assert seen["authorization"] == f"Bearer {gw.provider_keys['MOCK_OPENAI_KEY']}"
        assert seen["x_api_key"] is None and seen["api_key"] is None
    else:
        # Refused by the filter in OpenAI's error format, and nothing went upstream.
        assert status == 401, body[:300]
        assert headers["content-type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert (error["code"], error["type"]) == (expected, "authentication_error"), error
        assert error["message"]
        assert upstream_calls() == before
    assert_no_vm_failed(gw)
    assert gw.post("/v1/chat/completions", "security", {"model": "gpt-4o", "messages": []}).status_code == 200


def test_more_headers_than_envoy_allows_never_reach_the_filter(gw):
    """The bound of the cases above: Envoy answers 431 itself, and no VM failed."""
    status, _, _ = exchange(gw, MANY + b"".join(b"x-more-%d: v\r\n" % i for i in range(10)))
    assert status == 431
    assert_no_vm_failed(gw)


def test_the_clients_address_never_reaches_the_provider(gw):
    """Envoy would tell the provider who the gateway's users are (x-forwarded-for,
    x-envoy-external-address); the route removes both, sent by the client or added by Envoy."""
    r = gw.post("/v1/chat/completions", "open", {"model": "gpt-4o-mini", "messages": []},
                headers={"x-forwarded-for": "203.0.113.7"})
    assert r.status_code == 200
    seen = [s for s in gw.mock_stats()["requests"] if s["request_id"] == r.headers["x-request-id"]]
    assert len(seen) == 1
    assert seen[0]["x_forwarded_for"] is None
    assert not {"x-envoy-external-address", "x-envoy-expected-rq-timeout-ms"} & set(seen[0]["envoy_headers"])
