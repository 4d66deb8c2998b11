"""Streams split at any byte, cut streams, cancelled clients, failing upstreams."""

import json
import socket
import time

import httpx


def sse_events(raw: str):
    return [line[6:] for line in raw.split("\n") if line.startswith("data: ")]


def test_split_utf8_stream_arrives_intact_and_is_metered(gw):
    before = len(gw.records("faults"))
    r = gw.post("/v1/chat/completions", "faults", {"model": "gpt-4o", "stream": True, "messages": []},
                headers={"x-mock-split-bytes": "7", "x-mock-completion-tokens": "6", "x-mock-prompt-tokens": "11"})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == " ".join(f"tök{i}" for i in range(6))
    assert all('"usage":{' not in e for e in events), "usage chunk stripped"
    rec = gw.wait_records("faults", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["estimated"]) == (11, 6, False)


def test_split_anthropic_stream(gw):
    before = len(gw.records("faults"))
    r = httpx.post(gw.url + "/v1/messages", timeout=30,
                   headers={"x-api-key": gw.keys["faults"], "x-mock-split-bytes": "5", "x-mock-completion-tokens": "4",
                            "x-mock-prompt-tokens": "12"},
                   json={"model": "claude-3-5-sonnet", "max_tokens": 10, "stream": True, "messages": []})
    assert r.status_code == 200 and "message_stop" in r.text and "tök3" in r.text
    rec = gw.wait_records("faults", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (12, 4)


def test_upstream_cut_stream_is_charged_as_estimated(gw):
    before = len(gw.records("faults"))
    complete = True
    try:
        gw.post("/v1/chat/completions", "faults", {"model": "gpt-4o", "stream": True, "messages": []},
                headers={"x-mock-cut-after": "4", "x-mock-completion-tokens": "10"})
    except httpx.HTTPError:
        complete = False
    assert not complete, "the client must see the stream cut, not a clean end"
    rec = gw.wait_records("faults", before + 1)[-1]
    assert rec["estimated"] is True and rec["outcome"] == "truncated", rec
    assert rec["completion_tokens"] >= 2 and rec["cost_usd"] > 0


def test_client_cancel_mid_stream_is_charged_once(gw):
    before = len(gw.records("faults"))
    served_before = gw.mock_stats()["served"]
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": []}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           + f"authorization: Bearer {gw.keys['faults']}\r\n".encode()
           + b"x-mock-chunk-delay-ms: 200\r\nx-mock-completion-tokens: 30\r\n"
           + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(req)
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(4096)
    # The client is gone after ~3 events of 31.
    recs = gw.wait_records("faults", before + 1, timeout=15)
    time.sleep(1)
    recs = gw.records("faults")
    assert len(recs) == before + 1, "exactly one record"
    rec = recs[-1]
    assert rec["estimated"] is True and rec["outcome"] == "cancelled"
    assert 1 <= rec["completion_tokens"] < 30
    assert gw.mock_stats()["served"] == served_before + 1


def test_upstream_error_passes_through_and_costs_nothing(gw):
    before = len(gw.records("faults"))
    r = gw.post("/v1/chat/completions", "faults", {"model": "gpt-4o", "messages": []}, headers={"x-mock-status": "500"})
    assert r.status_code == 500 and "error" in r.json()
    rec = gw.wait_records("faults", before + 1)[-1]
    assert (rec["status"], rec["outcome"], rec["cost_usd"]) == (500, "upstream_error", 0.0)


def test_garbage_from_upstream_is_passed_and_estimated(gw):
    before = len(gw.records("faults"))
    r = gw.post("/v1/chat/completions", "faults", {"model": "gpt-4o", "messages": []}, headers={"x-mock-garbage": "1"})
    assert r.status_code == 200 and r.text == "this is not json {{{"
    rec = gw.wait_records("faults", before + 1)[-1]
    assert rec["estimated"] is True and rec["prompt_tokens"] > 0


def test_unreachable_provider_is_a_json_503(gw):
    r = gw.post("/v1/chat/completions", "faults", {"model": "dead-model", "messages": []})
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and str(err["code"]) == "503"


def test_unreachable_provider_is_a_503_in_anthropics_shape_on_messages(gw):
    """Envoy's own reply (no upstream answered) reaches an Anthropic client in Anthropic's error
    shape: to a Claude deployment (passed through) and to an OpenAI one (translated)."""
    for model in ("dead-claude", "dead-model"):
        r = httpx.post(gw.url + "/v1/messages", timeout=30, headers={"x-api-key": gw.keys["faults"]},
                       json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503, (model, r.text)
        body = r.json()
        assert body["type"] == "error", (model, body)
        assert body["error"]["type"] in ("api_error", "overloaded_error") and body["error"]["message"], (model, body)
