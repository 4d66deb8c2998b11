"""The response cache (`litellm_settings.cache`, type `local`) through a real Envoy, with the
OpenAI and Anthropic SDKs: a hit is answered by the filter (the mock provider is not called),
costs nothing and is recorded as one; tenants never share answers; LiteLLM's per-request
controls work; bad controls and unsupported cache types are refused with a reason."""

import json
import time
import uuid

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, filter_stat_name


class CacheGateway(Gateway):
    """The suite's gateway with LiteLLM's cache settings on."""

    def write_config(self):
        super().write_config()
        config = json.loads(self.config_path.read_text())
        config["litellm_settings"] = {"cache": True, "cache_params": {"type": "local", "ttl": 600}}
        # LiteLLM's key-level controls: this key is kept out of the cache.
        for key in config["keys"]:
            if key.get("key_alias") == "stream":
                key["metadata"] = {"cache": {"no-cache": True, "no-store": True}}
        self.config_path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    yield from CacheGateway(tmp_path_factory.mktemp("cache")).serve()


def counter(gw, name):
    stat = filter_stat_name(name)
    text = httpx.get(f"{gw.admin}/stats?filter=^{stat}$", timeout=5).text
    return int(text.split(": ")[1]) if ": " in text else 0


def provider_calls(gw):
    return sum(gw.mock_stats()["by_path"].values())


def prompt():
    """A prompt no other test sends: each test starts with nothing cached for it."""
    return [{"role": "user", "content": f"what is {uuid.uuid4().hex}?"}]


def oai(gw, alias="sdk"):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.keys[alias], max_retries=0)


def test_a_repeated_chat_is_answered_by_the_gateway_at_no_cost(gw):
    messages = prompt()
    calls = provider_calls(gw)
    before = len(gw.records("sdk"))
    first = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert first.headers["x-sluice-cache"] == "miss"
    second = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert second.headers["x-sluice-cache"] == "hit"
    assert second.headers["x-litellm-cache-key"] == first.headers["x-litellm-cache-key"]
    assert second.parse().model_dump() == first.parse().model_dump(), "the same answer, id included"
    assert provider_calls(gw) == calls + 1, "the hit never reached the provider"
    # Records reach the log in the order each worker ships them: read them by time.
    miss, hit = sorted(gw.wait_records("sdk", before + 2)[before:], key=lambda r: r["start_ms"])
    assert (miss["cache_hit"], hit["cache_hit"]) == (False, True)
    assert miss["cost_usd"] > 0 and hit["cost_usd"] == 0
    assert (hit["prompt_tokens"], hit["completion_tokens"]) == (miss["prompt_tokens"], miss["completion_tokens"])
    assert hit["outcome"] == "completed" and hit["status"] == 200
    # Envoy's counter says so too (reported on the filter's tick).
    deadline = time.time() + 5
    while counter(gw, "sluice.response_cache.hits") < 1:
        assert time.time() < deadline, "sluice.response_cache.hits never counted"
        time.sleep(0.1)


def test_a_streamed_answer_is_replayed_as_a_stream_the_sdk_reads(gw):
    messages = prompt()
    calls = provider_calls(gw)

    def ask():
        stream = oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_headers={"x-mock-completion-tokens": "7"})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage

    text, usage = ask()
    assert text == " ".join(f"tok{i}" for i in range(7)) and usage.completion_tokens == 7
    assert ask() == (text, usage), "the replay reads as the stream it was, usage chunk included"
    assert provider_calls(gw) == calls + 1
    # A request without streaming is not answered by the stream's entry.
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert provider_calls(gw) == calls + 2


def test_the_anthropic_sdk_gets_hits_in_its_own_format(gw):
    messages = prompt()
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["anthropic"], max_retries=0)
    calls = provider_calls(gw)
    first = client.messages.with_raw_response.create(model="claude-3-5-sonnet", max_tokens=50, messages=messages)
    second = client.messages.with_raw_response.create(model="claude-3-5-sonnet", max_tokens=50, messages=messages)
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("miss", "hit")
    assert second.parse().model_dump() == first.parse().model_dump()
    with client.messages.stream(model="claude-3-5-sonnet", max_tokens=50, messages=messages) as s:
        streamed = "".join(s.text_stream)
    with client.messages.stream(model="claude-3-5-sonnet", max_tokens=50, messages=messages) as s:
        assert "".join(s.text_stream) == streamed
        assert s.get_final_message().usage.output_tokens > 0
    assert provider_calls(gw) == calls + 2, "one call per form: a message and a stream"


def test_two_keys_never_read_each_others_answers(gw):
    messages = prompt()
    calls = provider_calls(gw)
    for alias in ("sdk", "open", "sdk", "open"):
        oai(gw, alias).chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert provider_calls(gw) == calls + 2, "one miss per key, then a hit each"


def test_a_key_kept_out_of_the_cache_by_its_metadata_never_reads_or_stores(gw):
    messages = prompt()
    calls = provider_calls(gw)
    for _ in range(3):
        raw = oai(gw, "stream").chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, extra_body={"cache": {"no-store": False}})
        assert raw.headers["x-sluice-cache"] == "miss"
    assert provider_calls(gw) == calls + 3


def test_litellms_per_request_controls(gw):
    messages = prompt()
    calls = provider_calls(gw)

    def ask(**control):
        raw = oai(gw).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, extra_body={"cache": control} if control else None)
        return raw.headers["x-sluice-cache"]

    assert ask(**{"no-store": True}) == "miss"
    assert ask() == "miss", "no-store stored nothing"
    assert ask(**{"no-cache": True}) == "miss", "no-cache does not read (and stores again)"
    assert ask() == "hit"
    assert ask(namespace="other") == "miss"
    assert provider_calls(gw) == calls + 4
    # A request's own TTL: stored for a second, then gone.
    fresh = prompt()
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=fresh, extra_body={"cache": {"ttl": 1}})
    time.sleep(1.3)
    raw = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=fresh)
    assert raw.headers["x-sluice-cache"] == "miss"
    # Cache-Control: no-cache, as a header.
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=fresh, extra_headers={"cache-control": "no-cache"})
    assert raw.headers["x-sluice-cache"] == "miss"


def test_bad_cache_controls_are_400s_in_the_clients_format(gw):
    with pytest.raises(openai.BadRequestError) as err:
        oai(gw).chat.completions.create(model="gpt-4o-mini", messages=prompt(), extra_body={"cache": {"ttl": -1}})
    assert err.value.body["param"] == "cache.ttl"
    r = gw.post("/v1/messages", "anthropic", {"model": "claude-3-5-sonnet", "max_tokens": 5, "messages": prompt(),
                                              "cache": {"no_store": True}})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and "no_store" in r.json()["error"]["message"]
    r = gw.post("/v1/chat/completions", "sdk", {"model": "gpt-4o-mini", "messages": prompt()},
                headers={"cache-control": "max-age=later"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache-control"


def test_cache_types_sluice_does_not_have_are_refused_with_the_reason(gw, tmp_path):
    config = json.loads(gw.config_path.read_text())
    config["litellm_settings"] = {"cache": True, "cache_params": {"type": "redis", "host": "localhost"}}
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    out = gw.cli("envoy-config", "-c", str(path), *gw.module_args, "--out", str(tmp_path / "envoy.yaml"), check=False)
    assert out.returncode != 0
    assert '"redis" is not supported by Sluice yet' in out.stderr
    assert "cache_params.host: not supported" in out.stderr


def test_in_xds_mode_the_setting_reaches_the_envoys_and_hits_reach_the_spend_logs(tmp_path):
    """`sluice serve`'s config.yaml turns the cache on for every Envoy it configures; a hit's
    usage record arrives at the control plane as LiteLLM's spend row with `cache_hit`, $0."""
    from test_xds import Fleet, create_key, wait_until
    f = Fleet(tmp_path)
    try:
        config = json.loads(f.config_path.read_text())
        config["litellm_settings"] = {"cache": True}
        f.config_path.write_text(json.dumps(config))
        f.start_control_plane()
        envoy = f.start_envoy("edge-cache")
        key, key_id = create_key(f, "--alias", "cached")
        body = {"model": "gpt-4o", "messages": prompt()}
        before = f.served()["served"]
        states = [envoy.chat(body, key=key).headers.get("x-sluice-cache") for _ in range(3)]
        assert states == ["miss", "hit", "hit"]
        assert f.served()["served"] == before + 1
        rows = wait_until(lambda: len(r := httpx.get(
            f"http://127.0.0.1:{f.admin_port}/spend/logs", params={"api_key": key_id},
            headers={"Authorization": f"Bearer {f.master_key}"}, timeout=10).json()) == 3 and r,
            what="three spend rows", timeout=30)
        assert sorted(r["cache_hit"] for r in rows) == ["False", "True", "True"]
        assert all(r["spend"] == 0 for r in rows if r["cache_hit"] == "True")
        assert [r["spend"] > 0 for r in rows if r["cache_hit"] == "False"] == [True]
        # A key's cache controls are checked when the key is made, as the Envoys read them.
        r = httpx.post(f"http://127.0.0.1:{f.admin_port}/key/generate", timeout=10,
                       headers={"Authorization": f"Bearer {f.master_key}"},
                       json={"metadata": {"cache": {"namespace": "mine"}}})
        assert r.status_code == 400 and "metadata.cache.namespace" in r.text, r.text
        r = httpx.post(f"http://127.0.0.1:{f.admin_port}/key/generate", timeout=10,
                       headers={"Authorization": f"Bearer {f.master_key}"},
                       json={"metadata": {"cache": {"no-store": True}}})
        assert r.status_code == 200, r.text
    finally:
        f.stop()
