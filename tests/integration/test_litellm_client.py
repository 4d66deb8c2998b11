"""LiteLLM's own management client and CLI, pointed at Sluice's gateway URL, as a team that moves
from LiteLLM keeps using them: `litellm.proxy.client.Client` and the `litellm-proxy` CLI from
the pinned LiteLLM release in `.venv-litellm` (SLUICE_LITELLM_VENV; its own venv, since
LiteLLM pins the OpenAI SDK below the test venv's). Keys are made, read, listed, changed and
deleted; teams, models and model groups listed; a chat made with the client's own chat calls,
plain and streamed, with the key it made. The management calls go through Envoy to the
control plane (xDS mode), as LiteLLM's clients reach one URL.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from test_xds import Fleet

CLIENT_SCRIPT = r"""
import json, sys, time
from litellm.proxy.client import Client

base, master = sys.argv[1], sys.argv[2]
admin = Client(base_url=base, api_key=master)
out = {}
made = admin.keys.generate(models=["gpt-4o-mini"], key_alias="from-litellm-client", duration="7d")
out["generate"] = made
out["info"] = admin.keys.info(made["key"])
out["list"] = admin.keys.list(key_alias="from-litellm-client", return_full_object=True)
out["update"] = admin.keys.update(made["key"], models=["gpt-4o-mini", "gpt-4o"], key_alias="renamed")
out["teams"] = admin.teams.list()
out["teams_v2"] = admin.teams.list_v2(page_size=5)
out["model_groups"] = admin.model_groups.info()
out["models"] = admin.models.list()
out["models_info"] = admin.models.info()
user = Client(base_url=base, api_key=made["key"])
messages = [{"role": "user", "content": "hello"}]
out["chat"] = user.chat.completions(model="gpt-4o", messages=messages, user="ada")
out["stream"] = list(user.chat.completions_stream(model="gpt-4o", messages=messages))
out["delete"] = admin.keys.delete(keys=[made["key"]])
# Revocation reaches every Envoy within a few hundred milliseconds (ARCHITECTURE.md).
for _ in range(50):
    try:
        user.chat.completions(model="gpt-4o", messages=messages)
        out["after_delete"] = "served"
        time.sleep(0.1)
    except Exception as e:
        # The client's own class for a 401.
        out["after_delete"] = type(e).__name__
        break
print(json.dumps(out))
"""


def litellm_venv():
    venv = os.environ.get("SLUICE_LITELLM_VENV")
    if not venv:
        pytest.fail("set SLUICE_LITELLM_VENV (cargo xtask test does: `cargo xtask setup` installs it)")
    return Path(venv)


def run(args, timeout=120):
    # LiteLLM's price map from its package: no download (the test machine has no internet).
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "HOME": os.environ["TMPDIR"]}
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("litellm-client"))
    try:
        f.start_control_plane()
        f.envoy = f.start_envoy("edge-litellm-client")
        yield f
    finally:
        f.stop()


@pytest.fixture(autouse=True)
def tmpdir_env(tmp_path, monkeypatch):
    # The CLI keeps its settings under $HOME: a directory of the test's own.
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def test_litellms_management_client_drives_the_gateway(fleet):
    python = litellm_venv() / "bin/python"
    out = json.loads(run([str(python), "-c", CLIENT_SCRIPT, fleet.envoy.url, fleet.master_key]).splitlines()[-1])
    made = out["generate"]
    assert made["key"].startswith("sk-") and made["key_alias"] == "from-litellm-client"
    assert made["models"] == ["gpt-4o-mini"] and made["expires"]
    assert made["key_name"] == f"{made['key'][:14]}...{made['key'][-4:]}", made["key_name"]
    assert out["info"]["info"]["key_alias"] == "from-litellm-client"
    assert made["key"] not in json.dumps(out["info"]), "a key is shown once, when it is made"
    assert [k["key_alias"] for k in out["list"]["keys"]] == ["from-litellm-client"]
    assert (out["update"]["key_alias"], out["update"]["models"]) == ("renamed", ["gpt-4o-mini", "gpt-4o"])
    assert out["teams"] == [] and out["teams_v2"]["teams"] == []
    groups = {g["model_group"] for g in out["model_groups"]}
    assert {"gpt-4o", "gpt-4o-mini"} <= groups, groups
    assert {"gpt-4o", "gpt-4o-mini"} <= {m["id"] for m in out["models"]}
    assert {m["model_name"] for m in out["models_info"]} >= {"gpt-4o", "gpt-4o-mini"}
    # The key the client made serves the model its update added, plain and streamed.
    assert out["chat"]["choices"][0]["message"]["content"] and out["chat"]["usage"]["total_tokens"] > 0
    chunks = out["stream"]
    assert chunks and "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert out["delete"]["deleted_keys"] == [made["key"]]
    assert out["after_delete"] == "UnauthorizedError", "a deleted key is refused within the revocation time"


def test_litellms_cli_lists_and_makes_keys_through_the_gateway(fleet):
    cli = [str(litellm_venv() / "bin/litellm-proxy"), "--base-url", fleet.envoy.url, "--api-key", fleet.master_key]
    made = run(cli + ["keys", "generate", "--models", "gpt-4o-mini", "--key-alias", "from-litellm-cli"])
    [key] = re.findall(r"sk-sluice-[A-Za-z0-9]{20,}", made)
    listed = run(cli + ["keys", "list", "--format", "json"])
    assert "from-litellm-cli" in listed, listed
    assert key not in listed and key[-4:] in listed, "keys are listed by name, never whole"
    health = run(cli + ["http", "request", "POST", "/key/health"])
    assert json.loads(health[health.index("{"):]) == {"key": "healthy", "logging_callbacks": None}, health
