"""The generated bootstrap is valid Envoy config; a config the filter refuses is refused."""

import json
import os
import subprocess

import pytest

from conftest import NATIVE, free_port


def test_generated_bootstrap_validates(gw):
    r = subprocess.run([gw.env_bin["ENVOY_BIN"], "--mode", "validate", "-c", str(gw.envoy_yaml)],
                       env=gw.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_config_check_refuses_settings_it_would_not_enforce(gw, tmp_path):
    cfg = json.loads(gw.config_path.read_text())
    cfg["router_settings"]["provider_budget_config"] = {"openai": {"budget_limit": 100, "time_period": "1d"}}
    cfg["litellm_settings"] = {"drop_params": True, "success_callback": ["langfuse"]}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    r = gw.cli("config", "check", "-c", str(path), check=False)
    assert r.returncode == 1, r.stderr
    assert "router_settings.provider_budget_config: not supported by Sluice" in r.stderr
    assert "litellm_settings.success_callback: logging callbacks are sent by `sluice serve`" in r.stderr
    assert "drop_params: not supported" not in r.stderr  # read and enforced, not refused
    # Envoy's config is not written from a config with settings Sluice would ignore.
    r = gw.cli("envoy-config", "-c", str(path), *gw.filter_args(), "--out", str(tmp_path / "e.yaml"), check=False)
    assert r.returncode != 0 and "provider_budget_config" in r.stderr and not (tmp_path / "e.yaml").exists()
    del cfg["router_settings"]["provider_budget_config"]
    del cfg["litellm_settings"]["success_callback"]
    path.write_text(json.dumps(cfg))
    gw.cli("config", "check", "-c", str(path))
    cfg["keys"][0]["max_budgte"] = 5
    path.write_text(json.dumps(cfg))
    r = gw.cli("config", "check", "-c", str(path), check=False)
    assert r.returncode == 1 and "max_budgte" in r.stderr


def test_envoy_refuses_a_filter_config_the_filter_rejects(gw, tmp_path):
    out = tmp_path / "envoy.yaml"
    gw.cli("envoy-config", "-c", str(gw.config_path), *gw.filter_args(), "--out", str(out),
           "--listen", f"127.0.0.1:{free_port()}", "--admin-port", str(free_port()))
    text = out.read_text()
    assert '\\"schema_version\\":1' in text or '"schema_version":1' in text
    out.write_text(text.replace('schema_version\\":1', 'schema_version\\":99').replace('"schema_version":1', '"schema_version":99'))
    proc = subprocess.run([gw.env_bin["ENVOY_BIN"], "-c", str(out), "--disable-hot-restart", "--base-id", str(os.getpid() % 1000 + 10)],
                          env=gw.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "schema_version 99" in proc.stderr


@pytest.mark.skipif(not NATIVE, reason="native build only: the module's load and ABI check")
def test_the_native_module_loads_at_envoys_abi_version_without_a_vm(gw):
    log = gw.log_path.read_text(errors="replace")
    assert "Dynamic module ABI version v0.2.0 matched." in log
    assert "sluice: filter configured (native)" in log
    bootstrap = gw.envoy_yaml.read_text()
    assert "DynamicModuleFilter" in bootstrap and "envoy.bootstrap.wasm" not in bootstrap and "vm_config" not in bootstrap


def test_a_failure_policy_the_build_cannot_apply_is_refused(gw, tmp_path):
    """fail_open/fail_reload are the wasm VM's; the native build has no VM and refuses them."""
    cfg = json.loads(gw.config_path.read_text())
    cfg["general_settings"]["sluice_failure_policy"] = "fail_open"
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    r = gw.cli("envoy-config", "-c", str(path), *gw.filter_args(), "--out", str(tmp_path / "e.yaml"), check=False)
    if NATIVE:
        assert r.returncode != 0 and "fail_closed" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert "FAIL_OPEN" in (tmp_path / "e.yaml").read_text()


def test_prices_come_from_the_built_in_table_and_an_unpriced_model_is_named(gw, tmp_path):
    """A model_list entry without model_info prices is priced from the built-in table (LiteLLM's
    published prices, `cargo xtask prices`); one the table does not know is named by `sluice
    config check`, never silently billed $0 without a word."""
    cfg = {
        "model_list": [
            {"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": gw.mock_url + "/v1",
                                                       "api_key": "os.environ/MOCK_OPENAI_KEY"}},
            {"model_name": "llama", "litellm_params": {"model": "hosted_vllm/llama-3-70b", "api_base": gw.mock_url + "/v1",
                                                        "api_key": "os.environ/MOCK_OPENAI_KEY"}},
        ],
        "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"},
    }
    path = tmp_path / "priced.yaml"
    path.write_text(json.dumps(cfg))
    r = gw.cli("config", "check", "-c", str(path))
    unpriced = [line for line in r.stderr.splitlines() if "no price known" in line]
    assert len(unpriced) == 1 and "hosted_vllm/llama-3-70b" in unpriced[0], r.stderr
    # The table's price reaches the filter's config: what every request of the group is charged.
    out = tmp_path / "envoy.yaml"
    gw.cli("envoy-config", "-c", str(path), *gw.filter_args(), "--out", str(out),
           "--listen", f"127.0.0.1:{free_port()}", "--admin-port", str(free_port()))
    text = out.read_text().replace("\\", "")
    assert '"input_cost_per_token":1.5e-7' in text and '"output_cost_per_token":6e-7' in text, text[:3000]


def test_config_check_refuses_bad_fallbacks_with_the_reason(gw, tmp_path):
    cfg = json.loads(gw.config_path.read_text())
    path = tmp_path / "c.yaml"
    for fallbacks, says in [
        ([{"gpt-4o": ["gpt-4o-mini"]}, {"gpt-4o-mini": ["gpt-4o"]}], "fallbacks: a cycle: gpt-4o"),
        ([{"gpt-4o": ["no-such-group"]}], 'fallbacks.gpt-4o: "no-such-group" is not a model group'),
        ([{"gpt-4o": ["gpt-4o"]}], "cannot fall back to itself"),
    ]:
        cfg["router_settings"]["fallbacks"] = fallbacks
        path.write_text(json.dumps(cfg))
        r = gw.cli("config", "check", "-c", str(path), check=False)
        assert r.returncode == 1 and says in r.stderr, r.stderr
    cfg["router_settings"]["fallbacks"] = [{"gpt-4o": ["claude-3-5-sonnet", "gpt-4o-mini"]}]
    path.write_text(json.dumps(cfg))
    gw.cli("config", "check", "-c", str(path))
