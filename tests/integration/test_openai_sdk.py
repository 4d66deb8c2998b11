"""The OpenAI Python SDK against Envoy+Sluice: what a user of the gateway does first."""

import hashlib
import json
import os
import subprocess
import time

import httpx
import openai
import pytest

from conftest import cost, filter_stat_name, free_port


def client(gw, alias, **kw):
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys[alias], max_retries=0, **kw)


def test_a_key_brought_from_litellm_keeps_working(gw):
    """config.yaml names it by LiteLLM's digest of it (sha256, LiteLLM's `token` column): the
    same key, its models held, in the OpenAI SDK."""
    before = len(gw.records("from-litellm"))
    reply = client(gw, "from-litellm").chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content
    assert gw.wait_records("from-litellm", before + 1)[-1]["model_group"] == "gpt-4o-mini"
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, "from-litellm").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    # One letter off is no key at all.
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys["from-litellm"][:-1] + "B", max_retries=0) \
            .chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])


def test_chat_completion_is_metered_at_the_price_table(gw):
    before = len(gw.records("sdk"))
    reply = client(gw, "sdk").chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-mock-prompt-tokens": "1200", "x-mock-completion-tokens": "7",
                       "x-mock-cached-tokens": "200", "x-mock-reasoning-tokens": "3"})
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 tok6"
    assert reply.usage.prompt_tokens == 1200 and reply.usage.completion_tokens == 7
    rec = gw.wait_records("sdk", before + 1)[-1]
    assert rec["model_group"] == "gpt-4o"
    assert rec["deployment"] in ("gpt-4o-a", "gpt-4o-b")
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cached_prompt_tokens"], rec["reasoning_tokens"]) == (1200, 7, 200, 3)
    assert rec["cost_usd"] == pytest.approx(cost("gpt-4o", 1200, 7, cached=200), abs=1e-9)
    assert rec["status"] == 200 and rec["outcome"] == "completed" and rec["estimated"] is False
    assert rec["key_id"] == gw.key_ids["sdk"]


def test_stream_without_include_usage_hides_the_usage_chunk_but_meters_it(gw):
    before = len(gw.records("stream"))
    chunks = list(client(gw, "stream").chat.completions.create(
        model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-completion-tokens": "5", "x-mock-prompt-tokens": "40"}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4"
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert all(c.choices for c in chunks)
    rec = gw.wait_records("stream", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (40, 5)
    assert rec["streamed"] is True and rec["estimated"] is False
    # Upstream did get include_usage.
    assert any(r["stream"] and r["include_usage"] for r in gw.mock_stats()["requests"])


def test_stream_with_include_usage_keeps_it_for_the_client(gw):
    chunks = list(client(gw, "stream").chat.completions.create(
        model="gpt-4o-mini", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-completion-tokens": "4", "x-mock-prompt-tokens": "10"}))
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 4 and usage[0].prompt_tokens == 10


def test_embeddings(gw):
    before = len(gw.records("sdk"))
    reply = client(gw, "sdk").embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                                extra_headers={"x-mock-prompt-tokens": "9"})
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 8
    rec = gw.wait_records("sdk", before + 1)[-1]
    assert rec["route"] == "/v1/embeddings" and rec["prompt_tokens"] == 9 and rec["completion_tokens"] == 0


def test_legacy_completions(gw):
    reply = client(gw, "sdk").completions.create(model="gpt-4o-mini", prompt="say", max_tokens=3)
    assert reply.choices[0].text == "tok0 tok1 tok2"


def test_models_lists_only_what_the_key_may_use(gw):
    assert [m.id for m in client(gw, "only-gpt4o").models.list()] == ["gpt-4o"]
    everything = {m.id for m in client(gw, "open").models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "claude-3-5-sonnet"} <= everything


def test_sdk_errors_map_to_the_right_exceptions(gw):
    bad = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-sluice-notarealkey", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o", messages=[])
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        client(gw, "only-gpt4o").chat.completions.create(model="gpt-4o-mini", messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "open").chat.completions.create(model="gpt-9", messages=[])
    assert e.value.code == "model_not_found"
    assert "gpt-9" in str(e.value) and gw.keys["open"] not in str(e.value)


def test_master_key_works_and_is_recorded_as_master(gw):
    master = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.master_key, max_retries=0)
    reply = master.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content.startswith("tok0")
    recs = gw.wait_for(lambda rs: any(r["key_id"] == "master" for r in rs))
    assert all(r["key_alias"] is None for r in recs if r["key_id"] == "master")
    # Envoy reads the key from its environment: neither it nor a digest one could brute-force
    # offline is in its config.
    dump = httpx.get(f"{gw.admin}/config_dump", timeout=10).text + gw.envoy_yaml.read_text()
    assert "SLUICE_MASTER_KEY" in dump
    assert gw.master_key not in dump and hashlib.sha256(gw.master_key.encode()).hexdigest() not in dump


def test_envoy_without_the_master_key_in_its_environment_does_not_start(gw, tmp_path):
    """A config that reads the master key from a variable Envoy was not given is refused when
    the filter loads, with the variable's name (not served on with the master key unusable)."""
    yaml, log = tmp_path / "envoy.yaml", tmp_path / "envoy.log"
    gw.cli("envoy-config", "-c", str(gw.config_path), *gw.module_args, "--out", str(yaml),
           "--listen", f"127.0.0.1:{free_port()}", "--admin-port", str(free_port()))
    env = {k: v for k, v in gw.env.items() if k != "SLUICE_MASTER_KEY"}
    with open(log, "w") as out:
        envoy = subprocess.run([gw.env_bin["ENVOY_BIN"], "-c", str(yaml), "--disable-hot-restart",
                                "--concurrency", "1", "--base-id", str(os.getpid() % 1000 + 100)],
                               env=env, stdout=subprocess.DEVNULL, stderr=out, timeout=60)
    assert envoy.returncode != 0
    assert "SLUICE_MASTER_KEY, which Envoy's environment does not hold" in log.read_text()


def test_a_rewritten_body_goes_upstream_with_its_own_content_length(gw):
    # A stream without include_usage is rewritten (the gateway adds it): the headers are held
    # until then, so the upstream gets an exact content-length, not a stale one or none.
    r = gw.post("/v1/chat/completions", "open",
                {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    seen = gw.mock_stats()["requests"][-1]
    assert seen["include_usage"] and seen["stream"]
    assert seen["content_length"] == str(seen["body_bytes"])


def test_the_openai_sdk_is_served_by_a_claude_model_group(gw):
    """LiteLLM's first promise: every model in the OpenAI format. A Claude group's deployment
    speaks Anthropic's Messages API; the gateway translates the request there and the answer
    back, and meters what Anthropic reported."""
    before = len(gw.records("sdk"))
    reply = client(gw, "sdk").chat.completions.create(
        model="claude-3-5-sonnet", max_tokens=40,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        extra_headers={"x-mock-prompt-tokens": "100", "x-mock-completion-tokens": "6",
                       "x-mock-cached-tokens": "30", "x-mock-cache-write-tokens": "20"})
    assert reply.object == "chat.completion" and reply.model == "claude-3-5-sonnet"
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5"
    assert reply.choices[0].finish_reason == "stop"
    # Anthropic counts cache reads and writes apart; OpenAI's prompt_tokens include them.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (150, 6)
    assert reply.usage.prompt_tokens_details.cached_tokens == 30
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == "/v1/messages"
    assert seen["x_api_key"] == gw.provider_keys["MOCK_ANTHROPIC_KEY"]
    rec = gw.wait_records("sdk", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["cache_write_tokens"], rec["completion_tokens"]) == (150, 30, 20, 6)
    assert rec["cost_usd"] == pytest.approx(cost("claude-3-5-sonnet", 150, 6, cached=30, cache_write=20), abs=1e-9)
    assert (rec["model_group"], rec["deployment"], rec["route"]) == ("claude-3-5-sonnet", "claude", "/v1/chat/completions")


def test_a_claude_stream_reaches_the_openai_sdk_as_chunks_with_usage(gw):
    before = len(gw.records("sdk"))
    stream = client(gw, "sdk").chat.completions.create(
        model="claude-3-5-sonnet", max_tokens=40, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-mock-prompt-tokens": "70", "x-mock-completion-tokens": "9"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"tok{i}" for i in range(9))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == 70 and chunks[-1].usage.completion_tokens == 9
    rec = gw.wait_records("sdk", before + 1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (70, 9, True, False)


def test_structured_output_from_claude_through_the_sdks_parse(gw):
    """`response_format` with a JSON schema (the SDK's `parse` with a Pydantic model) reaches
    Claude as a forced tool, LiteLLM's way; the tool's input comes back as the message's
    content, parsed by the SDK, whole or streamed."""
    import pydantic

    class Place(pydantic.BaseModel):
        city: str

    before = len(gw.records("sdk"))
    messages = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
    parsed = client(gw, "sdk").chat.completions.parse(model="claude-3-5-sonnet", messages=messages,
                                                      response_format=Place, max_tokens=50)
    choice = parsed.choices[0]
    assert choice.message.parsed == Place(city="Paris") and not choice.message.tool_calls
    assert choice.finish_reason == "stop"
    sent = gw.mock_stats()["requests"][-1]
    assert sent["path"] == "/v1/messages"
    # Streamed: the JSON arrives as content deltas, no tool call in sight.
    schema = {"name": "place", "schema": Place.model_json_schema()}
    chunks = list(client(gw, "sdk").chat.completions.create(
        model="claude-3-5-sonnet", messages=messages, max_tokens=50, stream=True,
        response_format={"type": "json_schema", "json_schema": schema}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"city": "Paris"}
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    records = gw.wait_records("sdk", before + 2)[-2:]
    assert all(r["status"] == 200 and r["outcome"] == "completed" and r["cost_usd"] > 0 for r in records)
    # json_object names no schema Claude can be held to: refused by name (LiteLLM ignores it).
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "sdk").chat.completions.create(model="claude-3-5-sonnet", messages=messages,
                                                  response_format={"type": "json_object"})
    assert "response_format" in str(e.value)


def test_a_parameter_claude_cannot_take_is_refused_by_name(gw):
    with pytest.raises(openai.BadRequestError) as e:
        client(gw, "sdk").chat.completions.create(
            model="claude-3-5-sonnet", messages=[{"role": "user", "content": "hi"}], logit_bias={"1": 1})
    assert "logit_bias" in str(e.value) and "drop_params" in str(e.value)


def test_with_drop_params_a_parameter_claude_cannot_take_is_dropped(gw):
    """LiteLLM's `drop_params: true` (here in the deployment's litellm_params; also
    `litellm_settings.drop_params`): the request is served without the parameter, and metered."""
    def dropped():
        stat = filter_stat_name("sluice.dropped_params.model_group.claude-lenient")
        text = httpx.get(f"{gw.admin}/stats?filter=^{stat}$", timeout=5).text
        return int(text.split(": ")[1]) if ": " in text else 0

    before, dropped_before = len(gw.records("sdk")), dropped()
    served = gw.mock_stats()["served"]
    reply = client(gw, "sdk").chat.completions.create(
        model="claude-lenient", max_tokens=40, messages=[{"role": "user", "content": "hi"}],
        logit_bias={"1": 1}, presence_penalty=0.5)
    assert reply.choices[0].message.content and reply.model == "claude-lenient"
    assert gw.mock_stats()["served"] == served + 1
    rec = gw.wait_records("sdk", before + 1)[-1]
    assert rec["deployment"] == "claude-lenient" and rec["cost_usd"] > 0
    # Counted, per model group: the operator sees what their clients lose (after a tick).
    deadline = time.time() + 5
    while dropped() < dropped_before + 2 and time.time() < deadline:
        time.sleep(0.1)
    assert dropped() == dropped_before + 2
