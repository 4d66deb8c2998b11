"""Container and Kubernetes files, checked statically (no Docker engine here): the config they
ship is valid, the bootstrap it generates passes Envoy's validation, the image is pinned."""

import re
import subprocess
import textwrap
from pathlib import Path

import httpx

from conftest import wasm_only

ROOT = Path(__file__).resolve().parents[2]
SHIPS_WASM = wasm_only("the container image and the manifests ship the wasm build")


def shipped_config() -> str:
    manifest = (ROOT / "deploy/kubernetes/sluice.yaml").read_text()
    block = manifest.split("config.yaml: |\n", 1)[1].split("\n---", 1)[0]
    return textwrap.dedent(block)


@SHIPS_WASM
def test_kubernetes_config_is_valid_and_its_bootstrap_validates(gw, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(shipped_config())
    env = {**gw.env, "OPENAI_API_KEY": "x", "SLUICE_MASTER_KEY": "sk-" + "0123456789abcdef" * 2}
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
    assert "--xds" in script
    manifest = (ROOT / "deploy/kubernetes/sluice.yaml").read_text()
    assert "secretRef" in manifest and "readOnlyRootFilesystem: true" in manifest
    # Secrets come from the Secret, never from the ConfigMap's config.yaml.
    assert re.search(r"api_key: os\.environ/", shipped_config())


@SHIPS_WASM
def test_xds_manifests_keep_credentials_on_the_control_plane_and_the_bootstrap_validates(gw, tmp_path):
    manifest = (ROOT / "deploy/kubernetes/sluice-xds.yaml").read_text()
    docs = manifest.split("\n---\n")
    gateway = next(d for d in docs if "name: sluice-gateway\n" in d and "kind: Deployment" in d)
    # The gateway pods get the control plane's address, never a provider key or the database.
    assert "SLUICE_XDS" in gateway and "secretRef" not in gateway and "OPENAI_API_KEY" not in gateway
    control_plane = next(d for d in docs if "name: sluice-control-plane\n" in d and "kind: Deployment" in d)
    assert '"--metrics-listen", "0.0.0.0:4003"' in control_plane, "Prometheus can scrape the control plane"
    # Several replicas must share Redis (rate-limit counts, revocations): the Secret names it.
    replicas = int(re.search(r"replicas: (\d+)", control_plane).group(1))
    secret = next(d for d in docs if "kind: Secret" in d)
    assert replicas == 1 or "REDIS_URL:" in secret
    policy = next(d for d in docs if "kind: NetworkPolicy" in d)
    assert "port: 4002" in policy and "sluice-gateway" in policy
    # mTLS on 4002 is on: the control plane serves it from `sluice pki`'s files, the gateways
    # present theirs, and the entrypoint refuses xDS mode without them.
    assert '"--pki-dir"' in control_plane and "--insecure-data-plane" not in manifest
    assert "secretName: sluice-xds-pki" in control_plane and "secretName: sluice-xds-envoy" in gateway
    for var in ("SLUICE_XDS_CA", "SLUICE_XDS_CERT", "SLUICE_XDS_KEY"):
        assert f"name: {var}, value:" in gateway and f"# - {{name: {var}" not in gateway
    entry = (ROOT / "deploy/entrypoint.sh").read_text()
    assert "--xds-ca" in entry and "exit 1" in entry
    # The control plane's config is a valid LiteLLM config.
    block = manifest.split("config.yaml: |\n", 1)[1].split("\n---", 1)[0]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(textwrap.dedent(block))
    env = {**gw.env, "OPENAI_API_KEY": "x", "SLUICE_MASTER_KEY": "sk-" + "0123456789abcdef" * 2, "DATABASE_URL": "sqlite::memory:"}
    check = subprocess.run([gw.env_bin["SLUICE_CLI"], "config", "check", "-c", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # The entrypoint's xDS bootstrap passes Envoy's own validation.
    out = tmp_path / "envoy.yaml"
    pki = tmp_path / "pki"
    cli = gw.env_bin["SLUICE_CLI"]
    subprocess.run([cli, "pki", "init", "--dir", str(pki), "--host", "sluice-control-plane"], check=True, timeout=60)
    subprocess.run([cli, "pki", "envoy", "--dir", str(pki), "--node-id", "gateway", "--any-node"], check=True, timeout=60)
    subprocess.run([cli, "envoy-config", "--xds", "sluice-control-plane:4002", "--node-id", "sluice-gateway-5d9c7-x2x9q",
                    "--xds-ca", str(pki / "ca.pem"), "--xds-cert", str(pki / "envoy-gateway.pem"),
                    "--xds-key", str(pki / "envoy-gateway.key"),
                    "--wasm", gw.env_bin["SLUICE_WASM"], "--out", str(out)], check=True, capture_output=True, timeout=60)
    validate = subprocess.run([gw.env_bin["ENVOY_BIN"], "--mode", "validate", "-c", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0, validate.stderr[-2000:]
    assert "SLUICE_XDS" in (ROOT / "deploy/entrypoint.sh").read_text()


def test_gateway_pods_keep_envoys_heap_limit_under_their_memory_limit():
    """The overload manager must shed load before the kernel kills the pod: the heap limit the
    entrypoint passes (`--max-heap-mb`) stays well under the container's memory limit, since the
    filter's wasm memory is outside the heap."""
    entry = (ROOT / "deploy/entrypoint.sh").read_text()
    assert "--max-heap-mb $SLUICE_MAX_HEAP_MB" in entry and "--max-connections $SLUICE_MAX_CONNECTIONS" in entry
    for name in ("sluice.yaml", "sluice-xds.yaml"):
        manifest = (ROOT / "deploy/kubernetes" / name).read_text()
        heap = re.search(r'name: SLUICE_MAX_HEAP_MB, value: "(\d+)"', manifest)
        limits = re.findall(r"limits: \{memory: (\d+)Gi\}", manifest)  # the gateway's (the control plane's is in Mi)
        assert heap and len(limits) == 1, name
        assert int(heap.group(1)) <= int(limits[0]) * 1024 * 3 // 4, name


def test_gateway_pods_probe_the_filters_health_routes(gw):
    """Kubernetes takes a gateway pod out of rotation while one of its workers cannot serve: the
    readiness probe is the filter's `/health/readiness` (503 then, see test_failure_policy.py),
    not a TCP check or Envoy's `/ready`, which both stay green. The routes need no key."""
    for name in ("sluice.yaml", "sluice-xds.yaml"):
        manifest = (ROOT / "deploy/kubernetes" / name).read_text()
        assert "httpGet: {path: /health/readiness, port: http}" in manifest, name
        assert "httpGet: {path: /health/liveliness, port: http}" in manifest, name
        assert "tcpSocket: {port: http}" not in manifest, name
    # The same routes on the running gateway: 200 without a key.
    assert httpx.get(f"{gw.url}/health/readiness", timeout=5).json()["status"] == "healthy"
    assert httpx.get(f"{gw.url}/health/liveliness", timeout=5).status_code == 200
