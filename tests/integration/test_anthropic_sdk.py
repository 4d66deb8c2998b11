"""The Anthropic Python SDK against /v1/messages through Envoy+Sluice."""

import anthropic
import pytest

from conftest import cost


def client(gw):
    return anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["anthropic"], max_retries=0)


def test_messages_non_streaming(gw):
    before = len(gw.records("anthropic"))
    msg = client(gw).messages.create(
        model="claude-3-5-sonnet", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "100", "x-mock-completion-tokens": "6",
                       "x-mock-cached-tokens": "30", "x-mock-cache-write-tokens": "20"})
    assert msg.content[0].text == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert msg.usage.input_tokens == 100 and msg.usage.output_tokens == 6
    rec = gw.wait_records("anthropic", before + 1)[-1]
    # Sluice counts cache reads and writes as input tokens, priced at their own rates.
    assert (rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["cache_write_tokens"], rec["completion_tokens"]) == (150, 30, 20, 6)
    assert rec["cost_usd"] == pytest.approx(cost("claude-3-5-sonnet", 150, 6, cached=30, cache_write=20), abs=1e-9)
    seen = gw.mock_stats()["requests"][-1]
    assert seen["x_api_key"] == gw.provider_keys["MOCK_ANTHROPIC_KEY"]
    assert seen["anthropic_version"]


def test_messages_streaming(gw):
    before = len(gw.records("anthropic"))
    with client(gw).messages.stream(
        model="claude-3-5-sonnet", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "70", "x-mock-completion-tokens": "9"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == " ".join(f"tok{i}" for i in range(9))
    assert final.usage.output_tokens == 9
    rec = gw.wait_records("anthropic", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (70, 9, True, False)


def test_the_anthropic_sdk_is_served_by_an_openai_model_group(gw):
    """Claude Code and the Anthropic SDK in front of GPT: the gateway translates the Messages
    request to Chat Completions and the answer back, and meters what OpenAI reported."""
    before = len(gw.records("anthropic"))
    msg = client(gw).messages.create(
        model="gpt-4o", max_tokens=50, system="Be brief.", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "100", "x-mock-completion-tokens": "6", "x-mock-cached-tokens": "40"})
    assert msg.type == "message" and msg.model == "gpt-4o"
    assert msg.content[0].text == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert msg.stop_reason == "end_turn"
    # Anthropic reports cached input apart from the rest.
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (60, 40, 6)
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["authorization"] == f"Bearer {gw.provider_keys['MOCK_OPENAI_KEY']}" and seen["x_api_key"] is None
    rec = gw.wait_records("anthropic", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["completion_tokens"]) == (100, 40, 6)
    assert rec["cost_usd"] == pytest.approx(cost("gpt-4o", 100, 6, cached=40), abs=1e-9)
    assert (rec["model_group"], rec["route"]) == ("gpt-4o", "/v1/messages")


def test_an_openai_model_streams_to_the_anthropic_sdk(gw):
    before = len(gw.records("anthropic"))
    with client(gw).messages.stream(
        model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "70", "x-mock-completion-tokens": "9"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == " ".join(f"tok{i}" for i in range(9))
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 9
    rec = gw.wait_records("anthropic", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (70, 9, True, False)


def test_a_parameter_openai_cannot_take_is_refused_by_name(gw):
    with pytest.raises(anthropic.BadRequestError) as e:
        client(gw).messages.create(model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"top_k": 3})
    assert "top_k" in str(e.value)


def test_the_gateways_own_refusals_come_in_anthropics_shape(gw):
    """Claude Code and the Anthropic SDK read `{"type":"error","error":{"type","message"}}`: a bad
    key, a model the gateway does not serve and a blocked key are refused in that shape, as the
    SDK's exception for the status."""
    bad = anthropic.Anthropic(base_url=gw.url, api_key="sk-sluice-" + "A" * 42, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="claude-3-5-sonnet", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    assert e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client(gw).messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "invalid_request_error" and "no-such-model" in e.value.body["error"]["message"]
    blocked = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["blocked"], max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        blocked.messages.create(model="claude-3-5-sonnet", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    # The OpenAI routes keep OpenAI's shape.
    r = gw.post("/v1/chat/completions", "blocked", {"model": "gpt-4o", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_blocked"


def test_count_tokens_is_answered_by_anthropic_or_estimated_and_never_billed(gw):
    """Claude Code counts a prompt's tokens before it sends it (`/v1/messages/count_tokens`):
    Anthropic's own count for a Claude group, the gateway's estimate for any other group, and
    no spend either way."""
    before = len(gw.records("anthropic"))
    counted = client(gw).messages.count_tokens(
        model="claude-3-5-sonnet", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "321"})
    assert counted.input_tokens == 321
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == "/v1/messages/count_tokens"
    assert seen["x_api_key"] == gw.provider_keys["MOCK_ANTHROPIC_KEY"]
    calls = len(gw.mock_stats()["requests"])
    estimated = client(gw).messages.count_tokens(model="gpt-4o", messages=[{"role": "user", "content": "hi " * 100}])
    assert 50 < estimated.input_tokens < 400
    assert len(gw.mock_stats()["requests"]) == calls, "an estimate calls no provider"
    with pytest.raises(anthropic.BadRequestError):
        client(gw).messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    # A billed request after them is the only new record.
    client(gw).messages.create(model="claude-3-5-sonnet", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert len(gw.wait_records("anthropic", before + 1)) == before + 1
