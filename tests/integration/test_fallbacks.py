"""LiteLLM's `fallbacks` and `default_fallbacks` through a real Envoy: a request whose group
fails is served by its fallback group (another provider included, translated), as the OpenAI
SDK sees it, and billed once, where it was answered. A failed step comes back through Envoy's
internal redirect as a new pass of the filter (ARCHITECTURE.md, "Retries, timeouts and
failover")."""
import json
import re
import subprocess
import time

import httpx
import openai
import pytest

from conftest import Gateway, free_port, model_entry

CHAT = [{"role": "user", "content": "hello there"}]


class FallbackGateway(Gateway):
    """Groups on a mock that answers 503 to everything (`primary`, `limited`), on nothing at all
    (`dead`: connections refused), on a mock whose model takes 40 tokens (`small`: longer
    prompts get OpenAI's context-length error), a group the gateway knows takes 30 tokens
    (`tiny`, checked before sending), one whose refusals are asked for per request (`guarded`),
    and healthy fallbacks on the usual mock: an Anthropic one (`claude-fb`, reached through
    translation) and an OpenAI one (`mini-fb`)."""

    def extra_mock(self, *flags):
        mock = subprocess.Popen([self.env_bin["SLUICE_MOCK"], "--listen", "127.0.0.1:0", *flags,
                                 "--openai-key", self.provider_keys["MOCK_OPENAI_KEY"]],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(mock)
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", mock.stdout.readline()).group(1)
        return f"http://127.0.0.1:{port}"

    def write_config(self):
        down = self.down_url = self.extra_mock("--status", "503")
        small = self.small_url = self.extra_mock("--context-window", "40")
        entry = lambda name, model, base, env, ident: {**model_entry("gpt-4o", model, base, env, ident),
                                                       "model_name": name}
        models = [
            entry("primary", "openai/gpt-4o", f"{down}/v1", "MOCK_OPENAI_KEY", "primary-a"),
            entry("limited", "openai/gpt-4o", f"{down}/v1", "MOCK_OPENAI_KEY", "limited-a"),
            entry("dead", "openai/gpt-4o", f"http://127.0.0.1:{free_port()}/v1", "MOCK_OPENAI_KEY", "dead-a"),
            entry("claude-fb", "anthropic/claude-3-5-sonnet-20241022", self.mock_url, "MOCK_ANTHROPIC_KEY", "claude-fb"),
            entry("mini-fb", "openai/gpt-4o-mini", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "mini-fb"),
            entry("small", "openai/gpt-4o", f"{small}/v1", "MOCK_OPENAI_KEY", "small-a"),
            entry("guarded", "openai/gpt-4o", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "guarded-a"),
        ]
        tiny = entry("tiny", "openai/gpt-4o", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "tiny-a")
        tiny["litellm_params"]["model"] = "openai/tiny-model"
        tiny["model_info"]["max_input_tokens"] = 30
        models.append(tiny)
        keys = []
        for alias, flags in {"fb": [], "primary-only": ["--models", "primary"],
                             "guarded-only": ["--models", "guarded"]}.items():
            out = json.loads(self.cli("key", "new", "--alias", alias, *flags, "--json").stdout)
            self.keys[alias] = out["key"]
            self.key_ids[alias] = out["key_hash"].removeprefix("sha256:")[:16]
            keys.append(out["entry"])
        config = {
            "model_list": models,
            "router_settings": {
                "fallbacks": [{"primary": ["claude-fb", "mini-fb"]}, {"dead": ["mini-fb"]}],
                "default_fallbacks": ["mini-fb"],
                "context_window_fallbacks": [{"small": ["claude-fb"]}, {"tiny": ["claude-fb"]}],
                "content_policy_fallbacks": [{"guarded": ["claude-fb"]}],
                "enable_pre_call_checks": True,
                "allowed_fails": 1,
                "cooldown_time": 30,
            },
            "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"},
            "keys": keys,
        }
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))

    def served(self, url):
        """Requests a mock was asked (answered with a failure or not)."""
        return sum(httpx.get(f"{url}/mock/stats", timeout=5).json()["by_path"].values())


@pytest.fixture(scope="module")
def fb(tmp_path_factory):
    yield from FallbackGateway(tmp_path_factory.mktemp("fallbacks")).serve()


def record_of(gw, request_id):
    """The usage record of one request (records arrive on the filter's tick)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        found = [r for r in gw.records() if r["request_id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def client(gw, alias="fb"):
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys[alias], max_retries=0)


def test_a_failing_group_is_answered_by_its_fallback_through_translation_and_billed_there(fb):
    down_before, up_before = fb.served(fb.down_url), fb.served(fb.mock_url)
    raw = client(fb).chat.completions.with_raw_response.create(model="primary", messages=CHAT)
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert raw.headers["x-litellm-attempted-fallbacks"] == "1"
    # The primary was asked once and failed; the Anthropic fallback answered once.
    assert (fb.served(fb.down_url), fb.served(fb.mock_url)) == (down_before + 1, up_before + 1)
    # The fallback got Anthropic's request with Anthropic's key, and nothing of the failover.
    seen = httpx.get(f"{fb.mock_url}/mock/stats", timeout=5).json()["requests"][-1]
    assert seen["path"] == "/v1/messages" and seen["x_api_key"] == fb.provider_keys["MOCK_ANTHROPIC_KEY"]
    assert seen["authorization"] is None
    # (Envoy's router names the redirect's host, `sluice.internal`, in x-envoy-original-host when
    # it rewrites the authority for the deployment: a constant, nothing of the client's.)
    assert "x-envoy-original-url" not in seen["envoy_headers"], seen["envoy_headers"]
    records = fb.wait_records("fb", 1)
    assert len(records) == 1, records
    assert (records[0]["model_group"], records[0]["deployment"]) == ("claude-fb", "claude-fb")
    assert records[0]["cost_usd"] > 0 and records[0]["status"] == 200
    # The failed try is in the record, and counted in Envoy's stats by deployment and class.
    assert records[0]["failed_attempts"] == [{"deployment": "primary-a", "error": "server_error"}]
    counter = re.compile(r'^sluice_failed_attempts\{deployment="primary-a",error="server_error"\} (\d+)$', re.M)
    deadline = time.time() + 5
    while not (found := counter.search(fb.prometheus())) or int(found.group(1)) < 1:
        assert time.time() < deadline, "sluice_failed_attempts{deployment=primary-a,error=server_error} never counted"
        time.sleep(0.1)


def test_a_stream_falls_back_before_its_first_byte(fb):
    chunks = list(client(fb).chat.completions.create(model="primary", messages=CHAT, stream=True,
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens > 0


def test_default_fallbacks_serve_a_group_without_its_own(fb):
    raw = client(fb).chat.completions.with_raw_response.create(model="limited", messages=CHAT)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-litellm-attempted-fallbacks"] == "1"
    record = record_of(fb, raw.headers["x-request-id"])
    assert record["model_group"] == "mini-fb"
    # One failure is within allowed_fails (1); the second takes limited-a out of rotation, and
    # the request's record says so (the pass that failed saved it for the one that answered).
    assert record["cooled_down"] == []
    raw = client(fb).chat.completions.with_raw_response.create(model="limited", messages=CHAT)
    record = record_of(fb, raw.headers["x-request-id"])
    assert record["failed_attempts"] == [{"deployment": "limited-a", "error": "server_error"}]
    assert record["cooled_down"] == record["failed_attempts"]


def test_a_key_never_reaches_a_model_through_a_fallback_it_may_not_use(fb):
    with pytest.raises(openai.APIStatusError) as failed:
        client(fb, "primary-only").chat.completions.create(model="primary", messages=CHAT)
    # The primary's own failure, as the provider answered it.
    assert failed.value.status_code == 503
    assert "x-litellm-attempted-fallbacks" not in failed.value.response.headers


def test_a_forged_failover_pass_is_unknown(fb):
    r = httpx.post(f"{fb.url}/__sluice/failover", headers={"x-sluice-failover": "0" * 32, **fb.auth("fb")},
                   json={"model": "primary", "messages": CHAT}, timeout=10)
    assert r.status_code == 404


def test_an_unreachable_group_with_fallbacks_cools_down_and_falls_back_before_sending(fb):
    # A refused connection has no answer to redirect: the router's retries, then cooldown. With
    # fallbacks, even a single-deployment group cools down (LiteLLM never cools down the only
    # deployment of a group: there is nothing else to route to; here there is).
    statuses = []
    for _ in range(4):
        r = httpx.post(f"{fb.url}/v1/chat/completions", headers=fb.auth("fb"),
                       json={"model": "dead", "messages": CHAT}, timeout=30)
        statuses.append(r.status_code)
    # The first fails (its attempts count against `allowed_fails: 1`); then mini-fb serves.
    assert statuses[0] == 503 and statuses[-2:] == [200, 200], statuses
    assert record_of(fb, r.headers["x-request-id"])["model_group"] == "mini-fb"


LONG = [{"role": "user", "content": "tell me everything about rivers " * 20}]


def test_a_prompt_too_long_for_its_model_goes_to_its_context_window_fallback(fb):
    small_before = fb.served(fb.small_url)
    raw = client(fb).chat.completions.with_raw_response.create(model="small", messages=LONG)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-litellm-attempted-fallbacks"] == "1"
    # `small` refused it (OpenAI's context_length_exceeded), Claude answered and is billed.
    assert fb.served(fb.small_url) == small_before + 1
    record = record_of(fb, raw.headers["x-request-id"])
    assert (record["model_group"], record["status"]) == ("claude-fb", 200)
    assert record["failed_attempts"] == [{"deployment": "small-a", "error": "context_window"}]
    # A refusal is the prompt's, not the deployment's failure: a short prompt is still `small`'s
    # (allowed_fails is 1: two counted failures would have cooled it down).
    for _ in range(2):
        client(fb).chat.completions.create(model="small", messages=LONG)
    raw = client(fb).chat.completions.with_raw_response.create(model="small", messages=CHAT)
    assert record_of(fb, raw.headers["x-request-id"])["model_group"] == "small"


def test_the_pre_send_check_never_sends_a_prompt_its_deployment_cannot_take(fb):
    def asked_tiny():
        seen = httpx.get(f"{fb.mock_url}/mock/stats", timeout=5).json()["requests"]
        return sum(1 for r in seen if r.get("model") == "tiny-model")

    before = asked_tiny()
    raw = client(fb).chat.completions.with_raw_response.create(model="tiny", messages=LONG)
    assert raw.parse().choices[0].message.content
    assert record_of(fb, raw.headers["x-request-id"])["model_group"] == "claude-fb"
    assert asked_tiny() == before, "the prompt's estimate is over tiny's max_input_tokens: never sent"
    # A prompt that fits is tiny's own.
    raw = client(fb).chat.completions.with_raw_response.create(model="tiny", messages=CHAT)
    assert record_of(fb, raw.headers["x-request-id"])["model_group"] == "tiny"
    assert asked_tiny() == before + 1


def test_a_content_policy_refusal_goes_to_its_own_fallback_and_another_400_to_the_client(fb):
    refuse = {"x-mock-refuse": "content_policy", "x-mock-fault-attempts": "1"}
    raw = client(fb).chat.completions.with_raw_response.create(model="guarded", messages=CHAT, extra_headers=refuse)
    assert raw.parse().choices[0].message.content
    assert record_of(fb, raw.headers["x-request-id"])["model_group"] == "claude-fb"
    # A 400 that is not a refusal is the client's: no fallback.
    with pytest.raises(openai.BadRequestError) as failed:
        client(fb).chat.completions.create(model="guarded", messages=CHAT,
                                           extra_headers={"x-mock-status": "400", "x-mock-fault-attempts": "1"})
    assert failed.value.response.headers["x-litellm-attempted-fallbacks"] == "0"
    # Refused with nowhere to go (a key that may not use the fallback): the provider's own 400.
    with pytest.raises(openai.BadRequestError) as failed:
        client(fb, "guarded-only").chat.completions.create(model="guarded", messages=CHAT, extra_headers=refuse)
    assert "safety system" in failed.value.message
