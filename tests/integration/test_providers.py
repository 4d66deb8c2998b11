"""Providers and model names, through a real Envoy with the real SDKs: Azure OpenAI (the
deployment's path with `api-version`, the key in `api-key`), reached by OpenAI-format and
Anthropic-format clients alike, metered and priced; OpenAI's Responses API passed through and
metered; LiteLLM's `model_group_alias` and wildcard model groups; Gemini and Bedrock chat and
embeddings behind translations."""

import json
import time

import anthropic
import httpx
import openai
import pytest

from conftest import AWS_ACCESS_KEY_ID, ENTRA_CLIENT_ID, cost

AZURE_PATH = "/openai/deployments/gpt4o-prod/chat/completions"


def records_where(gw, n, timeout=10.0, **fields):
    """The `n` usage records of this file's key whose fields have these values, once written.
    Every test asks for values no other request in this file produces (its own token counts),
    so a record another test's request writes late is never taken for this one's."""
    deadline = time.time() + timeout
    while True:
        found = [r for r in gw.records("providers") if all(r.get(k) == v for k, v in fields.items())]
        if len(found) >= n or time.time() > deadline:
            assert len(found) == n, f"{len(found)} records with {fields}, not {n}"
            return found
        time.sleep(0.05)


def openai_client(gw):
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.keys["providers"], max_retries=0)


def last_azure_call(gw):
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == AZURE_PATH, seen
    return seen


def test_the_openai_sdk_reaches_an_azure_deployment(gw):
    reply = openai_client(gw).chat.completions.create(
        model="azure-gpt", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "120", "x-mock-completion-tokens": "5", "x-mock-cached-tokens": "20"})
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (120, 5)
    seen = last_azure_call(gw)
    assert seen["query"] == "api-version=2024-10-21"
    # Azure's key in Azure's header; the client's Sluice key in no header at all.
    assert seen["api_key"] == gw.provider_keys["MOCK_AZURE_KEY"]
    assert seen["authorization"] is None and seen["x_api_key"] is None
    [rec] = records_where(gw, 1, model_group="azure-gpt", prompt_tokens=120)
    assert (rec["model_group"], rec["deployment"], rec["upstream_model"]) == ("azure-gpt", "azure-east", "gpt4o-prod")
    assert (rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["completion_tokens"]) == (120, 20, 5)
    assert rec["cost_usd"] == pytest.approx(cost("azure-gpt", 120, 5, cached=20), abs=1e-9)


def test_an_azure_stream_is_metered_from_its_usage_chunk(gw):
    stream = openai_client(gw).chat.completions.create(
        model="azure-gpt", stream=True, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "40", "x-mock-completion-tokens": "7"})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == " ".join(f"tok{i}" for i in range(7))
    seen = last_azure_call(gw)
    # The gateway asks Azure for the usage chunk even though this client did not.
    assert seen["stream"] and seen["include_usage"]
    [rec] = records_where(gw, 1, model_group="azure-gpt", prompt_tokens=40)
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (40, 7, True, False)


def test_the_anthropic_sdk_reaches_an_azure_deployment(gw):
    """Claude Code in front of Azure OpenAI: Messages → Chat Completions on Azure's path."""
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["providers"], max_retries=0)
    msg = client.messages.create(
        model="azure-gpt", max_tokens=50, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "30", "x-mock-completion-tokens": "3"})
    assert msg.type == "message" and msg.content[0].text == "tok0 tok1 tok2"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (30, 3)
    seen = last_azure_call(gw)
    assert seen["api_key"] == gw.provider_keys["MOCK_AZURE_KEY"] and seen["x_api_key"] is None
    [rec] = records_where(gw, 1, model_group="azure-gpt", prompt_tokens=30)
    assert (rec["route"], rec["prompt_tokens"], rec["completion_tokens"]) == ("/v1/messages", 30, 3)


def test_a_client_sending_its_key_as_api_key_does_not_leak_it_to_openai(gw):
    """Azure SDKs send the gateway key in `api-key`; an OpenAI deployment must not receive it."""
    reply = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                       headers={"api-key": gw.keys["providers"]}, timeout=30)
    assert reply.status_code == 200, reply.text
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["api_key"] is None
    assert seen["authorization"] == f"Bearer {gw.provider_keys['MOCK_OPENAI_KEY']}"


def test_an_azure_error_comes_back_in_the_clients_format(gw):
    reply = gw.post("/v1/chat/completions", "providers", {"model": "azure-gpt", "messages": []},
                    headers={"x-mock-status": "429"})
    assert reply.status_code == 429
    assert reply.json()["error"]["message"]


def test_a_model_group_alias_is_served_and_metered_as_its_group(gw):
    for name in ["gpt-4", "mini-hidden"]:
        reply = openai_client(gw).chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                          extra_headers={"x-mock-prompt-tokens": "77"})
        assert reply.choices[0].message.content
        assert gw.mock_stats()["requests"][-1]["model"] == "gpt-4o-mini"
    records_where(gw, 2, model_group="gpt-4o-mini", prompt_tokens=77)  # metered as the group
    listed = {m.id for m in openai_client(gw).models.list()}
    assert "gpt-4" in listed and "gpt-4o-mini" in listed
    assert "mini-hidden" not in listed  # served, not listed


def test_a_wildcard_group_sends_the_model_asked_for_at_the_tables_price(gw):
    for name in ["wild/gpt-4o-mini", "wild/my-fine-tune"]:
        reply = openai_client(gw).chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-prompt-tokens": "1000", "x-mock-completion-tokens": "100"})
        assert reply.choices[0].message.content
        assert gw.mock_stats()["requests"][-1]["model"] == name.removeprefix("wild/")
    # Two Envoy workers may write their records in either order.
    recs = {r["upstream_model"]: r for r in records_where(gw, 2, model_group="wild/*", prompt_tokens=1000)}
    known, unknown = recs["gpt-4o-mini"], recs["my-fine-tune"]
    assert (known["model_group"], known["upstream_model"], known["price_unknown"]) == ("wild/*", "gpt-4o-mini", False)
    # gpt-4o-mini in the built-in table: $0.15 and $0.60 per million tokens.
    assert known["cost_usd"] == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6, abs=1e-12)
    # Not in the table: served, recorded at $0 and flagged, never silently.
    assert (unknown["upstream_model"], unknown["cost_usd"], unknown["price_unknown"]) == ("my-fine-tune", 0, True)
    assert "wild/gpt-4o-mini" in {m.id for m in openai_client(gw).models.list()}


def test_the_responses_api_is_passed_through_and_metered(gw):
    resp = openai_client(gw).responses.create(
        model="gpt-4o-mini", input="hi", max_output_tokens=50,
        extra_headers={"x-mock-prompt-tokens": "90", "x-mock-cached-tokens": "30", "x-mock-completion-tokens": "4"})
    assert resp.output_text == "tok0 tok1 tok2 tok3"
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (90, 4)
    assert gw.mock_stats()["requests"][-1]["path"] == "/v1/responses"
    [rec] = records_where(gw, 1, route="/v1/responses", prompt_tokens=90)
    assert (rec["route"], rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["completion_tokens"]) == ("/v1/responses", 90, 30, 4)
    assert rec["cost_usd"] == pytest.approx(cost("gpt-4o-mini", 90, 4, cached=30), abs=1e-12)


def test_a_responses_stream_is_metered_from_response_completed_and_a_cut_one_estimated(gw):
    with openai_client(gw).responses.stream(
            model="gpt-4o-mini", input="hi",
            extra_headers={"x-mock-prompt-tokens": "25", "x-mock-completion-tokens": "6"}) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == " ".join(f"tok{i}" for i in range(6)) and final.usage.output_tokens == 6
    [rec] = records_where(gw, 1, route="/v1/responses", prompt_tokens=25)
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (25, 6, True, False)
    # The provider goes away before `response.completed`: charged for what was delivered.
    with httpx.stream("POST", f"{gw.url}/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True},
                      headers={**gw.auth("providers"), "x-mock-completion-tokens": "20", "x-mock-cut-after": "8"},
                      timeout=30) as r:
        try:
            for _ in r.iter_bytes():
                pass
        except httpx.HTTPError:
            pass  # the cut reaches the client as a broken stream
    [rec] = records_where(gw, 1, route="/v1/responses", estimated=True)
    assert rec["estimated"] and rec["outcome"] in ("truncated", "cancelled") and rec["completion_tokens"] > 0, rec


# ---- Gemini: an OpenAI client in front of Google's generateContent ---------------------------

GEMINI_PATH = "/v1beta/models/gemini-2.5-flash:generateContent"
GEMINI_STREAM_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"


def test_the_openai_sdk_reaches_a_gemini_deployment(gw):
    reply = openai_client(gw).chat.completions.create(
        model="gemini-flash", max_tokens=40,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "80", "x-mock-completion-tokens": "5",
                       "x-mock-cached-tokens": "30", "x-mock-reasoning-tokens": "7"})
    assert reply.model == "gemini-flash" and reply.object == "chat.completion"
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert reply.choices[0].finish_reason == "stop"
    # Thinking is billed as output: 5 + 7.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (80, 12)
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == GEMINI_PATH
    sent = seen["body_json"]
    assert sent["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert sent["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert sent["generationConfig"]["maxOutputTokens"] == 40
    # Google's key in Google's header; neither the client's key nor another provider's.
    assert seen["x_goog_api_key"] == gw.provider_keys["MOCK_GEMINI_KEY"]
    assert seen["authorization"] is None and seen["x_api_key"] is None and seen["api_key"] is None
    [rec] = records_where(gw, 1, model_group="gemini-flash", prompt_tokens=80)
    assert (rec["model_group"], rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["completion_tokens"],
            rec["reasoning_tokens"]) == ("gemini-flash", 80, 30, 12, 7)
    assert rec["cost_usd"] == pytest.approx(cost("gemini-flash", 80, 12, cached=30), abs=1e-12)


def test_a_gemini_stream_becomes_openai_chunks_with_usage(gw):
    stream = openai_client(gw).chat.completions.create(
        model="gemini-flash", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "20", "x-mock-completion-tokens": "6"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"tok{i}" for i in range(6))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == 20 and chunks[-1].usage.completion_tokens == 6
    assert gw.mock_stats()["requests"][-1]["path"] == GEMINI_STREAM_PATH
    [rec] = records_where(gw, 1, model_group="gemini-flash", prompt_tokens=20)
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (20, 6, True, False)


def test_gemini_function_calls_come_back_as_tool_calls(gw):
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    reply = openai_client(gw).chat.completions.create(
        model="gemini-flash", tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}],
        extra_headers={"x-mock-tool-call": "weather"})
    call = reply.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("weather", {"city": "Paris"})
    assert reply.choices[0].finish_reason == "tool_calls"
    sent = gw.mock_stats()["requests"][-1]["body_json"]
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "weather"


def test_a_gemini_error_reaches_the_openai_client_in_its_shape(gw):
    with pytest.raises(openai.RateLimitError) as e:
        openai_client(gw).chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-mock-status": "429"})
    assert e.value.status_code == 429 and "mock error 429" in str(e.value)


def test_the_anthropic_sdk_reaches_a_gemini_deployment(gw):
    """Claude Code in front of Gemini: Messages → (OpenAI) → generateContent and back."""
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["providers"], max_retries=0)
    msg = client.messages.create(
        model="gemini-flash", max_tokens=30, system="Be brief.", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "40", "x-mock-completion-tokens": "3"})
    assert msg.type == "message" and msg.content[0].text == "tok0 tok1 tok2"
    assert (msg.stop_reason, msg.usage.input_tokens, msg.usage.output_tokens) == ("end_turn", 40, 3)
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == GEMINI_PATH and seen["x_goog_api_key"] == gw.provider_keys["MOCK_GEMINI_KEY"]
    assert seen["body_json"]["systemInstruction"]["parts"][0]["text"] == "Be brief."
    with client.messages.stream(
            model="gemini-flash", max_tokens=30, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-prompt-tokens": "12", "x-mock-completion-tokens": "5"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == " ".join(f"tok{i}" for i in range(5)) and final.usage.output_tokens == 5
    recs = records_where(gw, 1, model_group="gemini-flash", prompt_tokens=12) + \
        records_where(gw, 1, model_group="gemini-flash", prompt_tokens=40)
    assert [(r["completion_tokens"], r["estimated"], r["route"]) for r in recs] == [(5, False, "/v1/messages"), (3, False, "/v1/messages")]


# ---- Bedrock: Converse, signed by Envoy ------------------------------------------------------

def last_bedrock_call(gw, method):
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"].startswith("/model/anthropic.claude-3-5-sonnet-20240620-v1") and seen["path"].endswith(f"/{method}"), seen
    # Envoy's aws_request_signing signed it with Envoy's own credentials, for Bedrock in the region.
    assert seen["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY_ID}/"), seen["authorization"]
    assert "/us-east-1/bedrock/aws4_request" in seen["authorization"] and seen["x_amz_date"]
    assert seen["x_api_key"] is None and seen["api_key"] is None
    return seen


def test_the_openai_sdk_reaches_a_bedrock_deployment_signed_by_envoy(gw):
    reply = openai_client(gw).chat.completions.create(
        model="bedrock-claude", max_tokens=40,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "100", "x-mock-completion-tokens": "4",
                       "x-mock-cached-tokens": "30", "x-mock-cache-write-tokens": "20"})
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (100, 4)
    seen = last_bedrock_call(gw, "converse")
    sent = seen["body_json"]
    assert sent["system"] == [{"text": "Be brief."}] and sent["inferenceConfig"]["maxTokens"] == 40
    [rec] = records_where(gw, 1, model_group="bedrock-claude", prompt_tokens=100)
    assert (rec["model_group"], rec["prompt_tokens"], rec["cached_prompt_tokens"], rec["cache_write_tokens"],
            rec["completion_tokens"]) == ("bedrock-claude", 100, 30, 20, 4)
    assert rec["cost_usd"] == pytest.approx(cost("bedrock-claude", 100, 4, cached=30, cache_write=20), abs=1e-12)


def test_a_bedrock_event_stream_becomes_openai_chunks_with_usage(gw):
    stream = openai_client(gw).chat.completions.create(
        model="bedrock-claude", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "15", "x-mock-completion-tokens": "6"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(f"tok{i}" for i in range(6))
    assert chunks[-1].usage.prompt_tokens == 15 and chunks[-1].usage.completion_tokens == 6
    last_bedrock_call(gw, "converse-stream")
    [rec] = records_where(gw, 1, model_group="bedrock-claude", prompt_tokens=15)
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["streamed"], rec["estimated"]) == (15, 6, True, False)


def test_structured_output_from_claude_on_bedrock_through_the_sdks_parse(gw):
    """`response_format` with a JSON schema reaches Claude on Bedrock as a forced tool (LiteLLM's
    `json_tool_call`), and the call comes back as the message's content, parsed by the SDK,
    whole or streamed."""
    import pydantic

    class Place(pydantic.BaseModel):
        city: str

    client = openai_client(gw)
    messages = [{"role": "user", "content": "Where is the Eiffel Tower?"}]
    parsed = client.chat.completions.parse(model="bedrock-claude", messages=messages, response_format=Place,
                                           max_tokens=50)
    assert parsed.choices[0].message.parsed == Place(city="Paris")
    assert parsed.choices[0].finish_reason == "stop" and not parsed.choices[0].message.tool_calls
    seen = gw.mock_stats()["requests"][-1]
    signed_by_envoy(seen)
    assert seen["body_json"]["toolConfig"]["toolChoice"] == {"tool": {"name": "json_tool_call"}}
    chunks = list(client.chat.completions.create(
        model="bedrock-claude", messages=messages, max_tokens=50, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": Place.model_json_schema()}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_the_anthropic_sdk_reaches_a_bedrock_deployment(gw):
    client = anthropic.Anthropic(base_url=gw.url, api_key=gw.keys["providers"], max_retries=0)
    msg = client.messages.create(
        model="bedrock-claude", max_tokens=30, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-mock-prompt-tokens": "9", "x-mock-completion-tokens": "2"})
    assert msg.content[0].text == "tok0 tok1" and (msg.usage.input_tokens, msg.usage.output_tokens) == (9, 2)
    last_bedrock_call(gw, "converse")
    with client.messages.stream(model="bedrock-claude", max_tokens=30, messages=[{"role": "user", "content": "hi"}],
                                extra_headers={"x-mock-completion-tokens": "3"}) as stream:
        assert "".join(stream.text_stream) == "tok0 tok1 tok2"


def test_a_bedrock_throttle_reaches_the_openai_client_as_a_429(gw):
    with pytest.raises(openai.RateLimitError) as e:
        openai_client(gw).chat.completions.create(
            model="bedrock-claude", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-mock-status": "429"})
    assert e.value.status_code == 429 and "mock error 429" in str(e.value)


# ---- Embeddings: Gemini's batchEmbedContents, Bedrock's InvokeModel (Titan, Cohere) ---------

GEMINI_EMBED_PATH = "/v1beta/models/gemini-embedding-001:batchEmbedContents"


def estimate(*texts):
    """The gateway's estimate of an input its provider does not count: each text's bytes by
    four, rounded up, at least one."""
    return sum(max(1, -(-len(t.encode()) // 4)) for t in texts)


def signed_by_envoy(seen):
    assert seen["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY_ID}/"), seen["authorization"]
    assert "/us-east-1/bedrock/aws4_request" in seen["authorization"] and seen["x_amz_date"]
    assert seen["x_api_key"] is None and seen["api_key"] is None


def test_the_openai_sdk_embeds_with_gemini_in_base64_by_default_and_in_floats(gw):
    client = openai_client(gw)
    texts = ["The food was delicious and the waiter was friendly.", "Sluice meters embeddings too"]
    # The SDK asks for base64 unless told otherwise, and decodes it.
    default = client.embeddings.create(model="gemini-embed", input=texts)
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == GEMINI_EMBED_PATH
    assert seen["x_goog_api_key"] == gw.provider_keys["MOCK_GEMINI_KEY"]
    assert seen["authorization"] is None and seen["x_api_key"] is None and seen["api_key"] is None
    assert seen["body_json"] == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}} for t in texts]}
    floats = client.embeddings.create(model="gemini-embed", input=texts, encoding_format="float")
    assert (floats.object, floats.model, [d.index for d in floats.data]) == ("list", "gemini-embed", [0, 1])
    assert [len(d.embedding) for d in floats.data] == [8, 8]
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert floats.data[0].embedding != floats.data[1].embedding
    # Gemini counts no tokens: both answers carry the gateway's estimate, as the records do.
    n = estimate(*texts)
    assert (default.usage.prompt_tokens, floats.usage.prompt_tokens, floats.usage.total_tokens) == (n, n, n)
    for rec in records_where(gw, 2, model_group="gemini-embed", prompt_tokens=n):
        assert (rec["route"], rec["status"], rec["outcome"], rec["estimated"], rec["completion_tokens"],
                rec["upstream_model"], rec["price_unknown"]) == \
            ("/v1/embeddings", 200, "completed", True, 0, "gemini-embedding-001", False)
        assert rec["cost_usd"] > 0 and rec["cost_usd"] == pytest.approx(cost("gemini-embed", n, 0), abs=1e-12)
    # dimensions is Gemini's outputDimensionality.
    short = client.embeddings.create(model="gemini-embed", input="hi", dimensions=4, encoding_format="float")
    assert len(short.data[0].embedding) == 4
    assert gw.mock_stats()["requests"][-1]["body_json"]["requests"][0]["outputDimensionality"] == 4


def test_titan_embeddings_are_metered_from_titans_own_count(gw):
    client = openai_client(gw)
    count = {"x-mock-prompt-tokens": "37"}
    reply = client.embeddings.create(model="titan-embed", input="Hello from Titan", dimensions=256, extra_headers=count)
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    signed_by_envoy(seen)
    assert seen["body_json"] == {"inputText": "Hello from Titan", "dimensions": 256}
    assert len(reply.data) == 1 and len(reply.data[0].embedding) == 256
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (37, 37)
    floats = client.embeddings.create(model="titan-embed", input=["Hello from Titan"], dimensions=256,
                                      encoding_format="float", extra_headers=count)
    assert floats.data[0].embedding == reply.data[0].embedding
    for rec in records_where(gw, 2, model_group="titan-embed", prompt_tokens=37):
        assert (rec["outcome"], rec["estimated"], rec["upstream_model"]) == \
            ("completed", False, "amazon.titan-embed-text-v2:0")
        assert rec["cost_usd"] == pytest.approx(cost("titan-embed", 37, 0), abs=1e-12)


def test_titan_embeds_several_texts_a_call_each_answered_as_one_list(gw):
    """Titan embeds one text a call: the gateway sends a call per text through the deployment's
    cluster (signed by Envoy), and the client gets one list in its order, metered at the sum of
    Titan's counts, in one record."""
    client = openai_client(gw)
    texts = ["Hello from Titan", "a second, longer text to embed", "3"]
    single = client.embeddings.create(model="titan-embed", input=texts[1], dimensions=256, encoding_format="float")
    calls = len(gw.mock_stats()["requests"])
    many = client.embeddings.create(model="titan-embed", input=texts, dimensions=256, encoding_format="float")
    seen = gw.mock_stats()["requests"][calls:]
    assert sorted(r["body_json"]["inputText"] for r in seen) == sorted(texts)
    for r in seen:
        assert r["path"] == "/model/amazon.titan-embed-text-v2%3A0/invoke" and r["body_json"]["dimensions"] == 256
        signed_by_envoy(r)
    assert [d.index for d in many.data] == [0, 1, 2] and many.model == "titan-embed"
    assert many.data[1].embedding == single.data[0].embedding
    assert many.data[0].embedding != many.data[2].embedding
    # The mock counts a text's bytes by four, as Titan's own count stands in for.
    n = sum(-(-len(t.encode()) // 4) for t in texts)
    assert (many.usage.prompt_tokens, many.usage.total_tokens) == (n, n)
    rec = records_where(gw, 1, model_group="titan-embed", prompt_tokens=n)[0]
    assert (rec["outcome"], rec["estimated"], rec["status"]) == ("completed", False, 200)
    assert rec["cost_usd"] == pytest.approx(cost("titan-embed", n, 0), abs=1e-12)
    # A call that fails is retried on its own (the request's num_retries), as a router attempt.
    calls = len(gw.mock_stats()["requests"])
    retried = client.embeddings.create(
        model="titan-embed", input=["x" * 8, "y" * 8], encoding_format="float", extra_body={"num_retries": 1},
        extra_headers={"x-mock-status": "503", "x-mock-fault-attempts": "1"})
    assert len(retried.data) == 2 and retried.usage.prompt_tokens == 4
    assert len(gw.mock_stats()["requests"]) == calls + 3
    # One that fails for good is the client's error, in OpenAI's shape with the provider's status.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="titan-embed", input=["one", "two"], extra_headers={"x-mock-status": "400"})
    assert e.value.status_code == 400 and "mock error 400" in str(e.value)
    rec = records_where(gw, 1, model_group="titan-embed", status=400)[0]
    assert (rec["outcome"], rec["prompt_tokens"], rec["cost_usd"]) == ("upstream_error", 0, 0)


def test_a_client_that_leaves_titans_calls_pays_for_them_and_envoy_carries_on(gw):
    """The client leaves while the calls are out: the record bills them at their estimates
    (the provider may have embedded them), and their late answers hurt nothing."""
    texts = ["z" * 40, "w" * 40]
    with pytest.raises(openai.APITimeoutError):
        openai_client(gw).with_options(timeout=0.5).embeddings.create(
            model="titan-embed", input=texts, extra_headers={"x-mock-latency-ms": "1500"})
    rec = records_where(gw, 1, model_group="titan-embed", prompt_tokens=20)[0]
    assert (rec["outcome"], rec["estimated"]) == ("cancelled", True)
    assert rec["cost_usd"] == pytest.approx(cost("titan-embed", 20, 0), abs=1e-12)
    time.sleep(1.5)  # the calls' answers come back to a stream that is gone
    again = openai_client(gw).embeddings.create(model="titan-embed", input=["still", "here"])
    assert len(again.data) == 2


def test_cohere_embeddings_on_bedrock_are_estimated(gw):
    client = openai_client(gw)
    texts = ["a first document", "a second, somewhat longer document", "third"]
    floats = client.embeddings.create(model="cohere-embed", input=texts, encoding_format="float")
    seen = gw.mock_stats()["requests"][-1]
    assert seen["path"] == "/model/cohere.embed-english-v3/invoke"
    signed_by_envoy(seen)
    assert seen["body_json"] == {"texts": texts, "input_type": "search_document"}
    assert [len(d.embedding) for d in floats.data] == [8, 8, 8]
    default = client.embeddings.create(model="cohere-embed", input=texts)
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    n = estimate(*texts)
    assert (floats.usage.prompt_tokens, default.usage.prompt_tokens) == (n, n)
    for rec in records_where(gw, 2, model_group="cohere-embed", prompt_tokens=n):
        assert (rec["outcome"], rec["estimated"]) == ("completed", True)
        assert rec["cost_usd"] == pytest.approx(cost("cohere-embed", n, 0), abs=1e-12)
    # Cohere v3 has no `dimensions`: refused by name (LiteLLM's UnsupportedParamsError).
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="cohere-embed", input="x", dimensions=256)
    assert "dimensions" in str(e.value)


def test_embedding_errors_reach_the_openai_client_in_its_shape(gw):
    client = openai_client(gw)
    for model in ["gemini-embed", "titan-embed", "cohere-embed"]:
        with pytest.raises(openai.RateLimitError) as e:
            client.embeddings.create(model=model, input="hi", extra_headers={"x-mock-status": "429"})
        assert e.value.status_code == 429 and "mock error 429" in str(e.value), model
        [rec] = records_where(gw, 1, model_group=model, status=429)
        assert (rec["outcome"], rec["prompt_tokens"], rec["cost_usd"]) == ("upstream_error", 0, 0)
    # Token ids are OpenAI's own: a 400 naming `input`.
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="gemini-embed", input=[[1, 2, 3]])
    assert e.value.param == "input"



def test_a_standalone_envoy_refuses_an_entra_id_deployment_with_the_reason(gw, tmp_path):
    """An Entra ID application needs `sluice serve` (the client secret over SDS): a standalone
    bootstrap is refused, naming the deployment and the way out."""
    cfg = json.loads(gw.config_path.read_text())
    cfg["model_list"].append({"model_name": "azure-entra", "model_info": {"id": "azure-entra"},
                              "litellm_params": {"model": "azure/gpt4o-prod", "api_base": gw.mock_url,
                                                 "tenant_id": "contoso", "client_id": ENTRA_CLIENT_ID,
                                                 "client_secret": "os.environ/MOCK_ENTRA_SECRET"}})
    path = tmp_path / "entra.yaml"
    path.write_text(json.dumps(cfg))
    r = gw.cli("envoy-config", "-c", str(path), *gw.filter_args(), "--out", str(tmp_path / "e.yaml"), check=False)
    assert r.returncode != 0 and "(azure-entra) need `sluice serve`" in r.stderr, r.stderr
    assert gw.provider_keys["MOCK_ENTRA_SECRET"] not in r.stderr
