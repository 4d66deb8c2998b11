"""Container and Kubernetes files, checked statically (no Docker engine here): the config they
ship is valid, the bootstrap it generates passes Envoy's validation, the image is pinned."""

import re
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shipped_config() -> str:
    manifest = (ROOT / "deploy/kubernetes/sluice.yaml").read_text()
    block = manifest.split("config.yaml: |\n", 1)[1].split("\n---", 1)[0]
    return textwrap.dedent(block)


def test_kubernetes_config_is_valid_and_its_bootstrap_validates(gw, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(shipped_config())
    env = {**gw.env, "OPENAI_API_KEY": "x", "SLUICE_MASTER_KEY": "y"}
    check = subprocess.run([gw.env_bin["SLUICE_CLI"], "config", "check", "-c", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    out = tmp_path / "envoy.yaml"
    subprocess.run([gw.env_bin["SLUICE_CLI"], "envoy-config", "-c", str(cfg), "--wasm", gw.env_bin["SLUICE_WASM"],
                    "--out", str(out)], env=env, check=True, capture_output=True, timeout=60)
    validate = subprocess.run([gw.env_bin["ENVOY_BIN"], "--mode", "validate", "-c", str(out)], env=env,
                              capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stderr[-2000:]
    # TLS to the real provider verifies the certificate and its name.
    text = out.read_text()
    assert "api.openai.com" in text and "match_typed_subject_alt_names" in text and "ca-certificates.crt" in text


def test_image_and_entrypoint():
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    images = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert images == ["rust:1.95.0-bookworm", "envoyproxy/envoy:v1.40.0"], images
    entry = ROOT / "deploy/entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(entry)]).returncode == 0
    script = entry.read_text()
    assert "sluice config check" in script and "sluice envoy-config" in script and "exec envoy" in script
    manifest = (ROOT / "deploy/kubernetes/sluice.yaml").read_text()
    assert "secretRef" in manifest and "readOnlyRootFilesystem: true" in manifest
    # Secrets come from the Secret, never from the ConfigMap's config.yaml.
    assert re.search(r"api_key: os\.environ/", shipped_config())
