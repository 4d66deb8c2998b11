#!/usr/bin/env python3
"""Checks rendered Sluice manifests for combinations that Kubernetes accepts but that break Sluice.

    kubectl kustomize deploy/kubernetes/overlays/control-plane-sqlite | python3 deploy/kubernetes/check.py
    python3 deploy/kubernetes/check.py --kustomize deploy/kubernetes/overlays/control-plane-sqlite
    python3 deploy/kubernetes/check.py rendered.yaml ...

Run it in your own CI on what you apply (your overlay of these bases). It needs Python 3.9+ and
PyYAML (`pip install pyyaml`); `--kustomize` also needs kubectl. Exit status 1 when an ERROR is
printed, 0 otherwise (WARNINGs are printed and do not fail). What it checks:

- the control plane (`sluice serve`): SQLite with more than one replica (or an autoscaler that
  may add one), or with a rolling update (two pods on one file); a SQLite file that is not on a
  volume; replicas without Redis (warning); the admin port bound to loopback (probes fail);
  the data-plane port without mTLS;
- Sluice's Envoy (the image's entrypoint): readiness and liveness probes on the filter's own
  health routes at the listener's port; a writable volume where the bootstrap is written; mTLS
  to the control plane in xDS mode; Envoy's heap limit under the container's memory limit;
  standalone gateways with several replicas (warning: each counts limits and spend alone); the
  control plane's NetworkPolicy letting xDS pods reach port 4002;
- every container of every workload: non-root, read-only root filesystem, no privilege
  escalation, all capabilities dropped, seccomp RuntimeDefault (or Localhost), CPU and memory
  requests and a memory limit.
"""

import argparse
import base64
import posixpath
import subprocess
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("check.py needs PyYAML: pip install pyyaml")

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# The filter's probe routes (filter/src/health.rs, `Probe::from_path`).
READINESS_PATHS = ("/health/readiness",)
LIVENESS_PATHS = ("/health/liveliness", "/health/liveness")
# deploy/entrypoint.sh's defaults.
ENTRYPOINT = "/usr/local/bin/sluice-entrypoint"
DEFAULT_LISTEN = "0.0.0.0:4000"
DEFAULT_ENVOY_CONFIG = "/tmp/sluice-envoy.yaml"
DATA_PLANE_PORT_DEFAULT = "127.0.0.1:4002"
# `sluice serve`'s defaults (control-plane/src/main.rs, ServeArgs).
DEFAULT_ADMIN_LISTEN = "127.0.0.1:4001"
DEFAULT_DATABASE_URL = "sqlite:sluice.db"
UNKNOWN = object()  # a value from a Secret or ConfigMap that is not in the checked objects


class Report:
    def __init__(self):
        self.errors = []
        self.warnings = []

    def error(self, where, message):
        self.errors.append(f"ERROR {where}: {message}")

    def warning(self, where, message):
        self.warnings.append(f"WARNING {where}: {message}")


def load(texts):
    objects = []
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
                objects.extend(i for i in doc["items"] if isinstance(i, dict))
            else:
                objects.append(doc)
    return objects


def name_of(obj):
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def pod_template(obj):
    """(pod metadata, pod spec) of a workload, or None."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        return obj.get("metadata") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    template = spec.get("template") or {}
    return template.get("metadata") or {}, template.get("spec") or {}


def containers(pod_spec):
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod_spec.get(field) or []:
            yield field, c


def parse_quantity(q):
    """Bytes of a memory quantity (e.g. 1Gi, 512Mi, 1G); None if unreadable."""
    if q is None:
        return None
    q = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix in sorted(units, key=len, reverse=True):
        if q.endswith(suffix):
            try:
                return float(q[: -len(suffix)]) * units[suffix]
            except ValueError:
                return None
    try:
        return float(q)
    except ValueError:
        return None


class Cluster:
    """The checked objects, for lookups across them."""

    def __init__(self, objects):
        self.objects = objects

    def find(self, kind, name):
        for o in self.objects:
            if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name:
                return o
        return None

    def data(self, kind, name, key):
        obj = self.find(kind, name)
        if obj is None:
            return UNKNOWN
        if key in (obj.get("stringData") or {}):
            return str(obj["stringData"][key])
        value = (obj.get("data") or {}).get(key)
        if value is None:
            return None
        if kind == "Secret":
            try:
                return base64.b64decode(value).decode()
            except ValueError:
                return UNKNOWN
        return str(value)

    def data_keys(self, kind, name):
        obj = self.find(kind, name)
        if obj is None:
            return None
        return set(obj.get("data") or {}) | set(obj.get("stringData") or {})

    def env(self, container, var):
        """A container's environment variable: its value, UNKNOWN, or None when unset."""
        for e in reversed(container.get("env") or []):
            if e.get("name") != var:
                continue
            if "value" in e:
                return str(e["value"])
            ref = e.get("valueFrom") or {}
            if "secretKeyRef" in ref:
                return self.data("Secret", ref["secretKeyRef"].get("name"), ref["secretKeyRef"].get("key"))
            if "configMapKeyRef" in ref:
                return self.data("ConfigMap", ref["configMapKeyRef"].get("name"), ref["configMapKeyRef"].get("key"))
            return UNKNOWN
        for source in reversed(container.get("envFrom") or []):
            prefix = source.get("prefix") or ""
            if not var.startswith(prefix):
                continue
            for kind, field in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if field in source:
                    ref = source[field].get("name")
                    keys = self.data_keys(kind, ref)
                    if keys is None:
                        return UNKNOWN  # made outside these manifests: may hold anything
                    if var[len(prefix):] in keys:
                        return self.data(kind, ref, var[len(prefix):])
        return None

    def mounted_file(self, pod_spec, container, path):
        """The text of the file at `path` in the container, if a ConfigMap or Secret here holds it."""
        for m in container.get("volumeMounts") or []:
            mount = m.get("mountPath", "").rstrip("/")
            if not path.startswith(mount + "/"):
                continue
            key = m.get("subPath") or path[len(mount) + 1:]
            volume = next((v for v in pod_spec.get("volumes") or [] if v.get("name") == m.get("name")), {})
            for kind, field, ref in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                if field in volume:
                    items = volume[field].get("items")
                    if items:
                        key = next((i["key"] for i in items if i.get("path") == key), key)
                    return self.data(kind, volume[field].get(ref), key)
        return None

    def volume_at(self, pod_spec, container, path):
        """The volume mounted at `path` or a directory above it, or None."""
        best = None
        for m in container.get("volumeMounts") or []:
            mount = m.get("mountPath", "").rstrip("/") or "/"
            if path == mount or path.startswith(mount + "/"):
                if best is None or len(mount) > len(best[0]):
                    best = (mount, m)
        if best is None:
            return None
        return next((v for v in pod_spec.get("volumes") or [] if v.get("name") == best[1].get("name")), None)

    def autoscaler(self, obj):
        """The HorizontalPodAutoscaler that scales a workload, if any."""
        for hpa in self.objects:
            target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if hpa.get("kind") == "HorizontalPodAutoscaler" and target.get("kind") == obj.get("kind") \
                    and target.get("name") == (obj.get("metadata") or {}).get("name"):
                return hpa
        return None

    def max_replicas(self, obj):
        """The most pods a workload may run: its replicas, or its autoscaler's maximum."""
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        if kind == "DaemonSet":
            return None  # one per node
        if kind in ("Pod", "Job", "CronJob"):
            return 1
        hpa = self.autoscaler(obj)
        return max(spec.get("replicas", 1), ((hpa or {}).get("spec") or {}).get("maxReplicas", 1))


def command_line(container):
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def flag(argv, name, short=None):
    """The value of `--name VALUE` or `--name=VALUE` (or `-s VALUE`), the last one given."""
    found = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            found = a.split("=", 1)[1]
        elif a == f"--{name}" or (short and a == f"-{short}"):
            found = argv[i + 1] if i + 1 < len(argv) else ""
    return found


def has_flag(argv, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def is_control_plane(container):
    argv = command_line(container)
    return len(argv) >= 2 and posixpath.basename(argv[0]) == "sluice" and "serve" in argv[1:2]


def is_sluice_envoy(container):
    """Runs the image's entrypoint (Envoy with Sluice): no command of its own, or the entrypoint,
    in Sluice's image (by its name, or, renamed, by the entrypoint's variables it sets)."""
    image = str(container.get("image", "")).rsplit("/", 1)[-1]
    command = container.get("command")
    ours = "sluice" in image or any(str(e.get("name", "")).startswith("SLUICE_") for e in container.get("env") or [])
    return ours and (not command or command[0] == ENTRYPOINT)


def port_of(address):
    return address.rsplit(":", 1)[-1] if address else None


def resolve_port(container, port):
    """A probe's port (number or a name of the container's ports) as a string."""
    if isinstance(port, int) or str(port).isdigit():
        return str(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return str(p.get("containerPort"))
    return None


def is_loopback(address):
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_security(report, where, pod_spec, field, c):
    pod_sc = pod_spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    who = f"{where} {field[:-1]} {c.get('name')}"

    def effective(key):
        return sc.get(key, pod_sc.get(key))

    if effective("runAsNonRoot") is not True:
        report.error(who, "securityContext.runAsNonRoot must be true (here or in the pod's securityContext)")
    if effective("runAsUser") == 0:
        report.error(who, "runs as root (runAsUser: 0)")
    if sc.get("readOnlyRootFilesystem") is not True:
        report.error(who, "securityContext.readOnlyRootFilesystem must be true (mount an emptyDir where it writes)")
    if sc.get("allowPrivilegeEscalation") is not False:
        report.error(who, "securityContext.allowPrivilegeEscalation must be false")
    if sc.get("privileged") is True:
        report.error(who, "must not be privileged")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        report.error(who, "securityContext.capabilities.drop must include ALL")
    seccomp = (effective("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        report.error(who, f"seccompProfile.type must be RuntimeDefault (is {seccomp or 'unset'})")
    resources = c.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    missing = [f"requests.{r}" for r in ("cpu", "memory") if r not in requests]
    missing += ["limits.memory"] if "memory" not in limits else []
    if missing and field != "ephemeralContainers":
        report.error(who, f"resources need {', '.join(missing)}")


def check_sluice_envoy(report, cluster, obj, where, pod_meta, pod_spec, c):
    who = f"{where} container {c.get('name')}"
    listen = cluster.env(c, "SLUICE_LISTEN")
    listen_port = port_of(listen if isinstance(listen, str) else DEFAULT_LISTEN)
    for kind, paths in (("readinessProbe", READINESS_PATHS), ("livenessProbe", LIVENESS_PATHS)):
        probe = c.get(kind)
        get = (probe or {}).get("httpGet")
        if not get:
            report.error(who, f"{kind} must be an httpGet on the filter's {' or '.join(paths)} (a TCP check or "
                              "Envoy's /ready stays green while a worker cannot serve)")
            continue
        if get.get("path", "").split("?")[0].rstrip("/") not in paths:
            report.error(who, f"{kind} path {get.get('path')!r} is not one the filter answers ({', '.join(paths)})")
        if resolve_port(c, get.get("port")) != listen_port:
            report.error(who, f"{kind} port {get.get('port')!r} is not the listener's ({listen_port}, SLUICE_LISTEN)")
    out = cluster.env(c, "SLUICE_ENVOY_CONFIG")
    out = out if isinstance(out, str) else DEFAULT_ENVOY_CONFIG
    volume = cluster.volume_at(pod_spec, c, posixpath.dirname(out))
    if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") and not (volume and "emptyDir" in volume):
        report.error(who, f"the entrypoint writes Envoy's bootstrap to {out}: mount an emptyDir at "
                          f"{posixpath.dirname(out)} (the root filesystem is read-only)")
    heap = cluster.env(c, "SLUICE_MAX_HEAP_MB")
    limit = parse_quantity(((c.get("resources") or {}).get("limits") or {}).get("memory"))
    if isinstance(heap, str) and heap.isdigit() and limit and int(heap) * 2**20 > limit * 3 / 4:
        report.error(who, f"SLUICE_MAX_HEAP_MB={heap} is not a quarter under the memory limit: the filter's wasm "
                          "memory is outside Envoy's heap, and the kernel kills the pod before Envoy sheds load")
    xds = cluster.env(c, "SLUICE_XDS")
    if xds is None:
        if (cluster.max_replicas(obj) or 2) > 1:
            report.warning(who, "standalone mode with several replicas: each pod counts limits and spend alone "
                                "(and spend lives in Envoy's memory); the control plane shares them")
        return
    tls = [cluster.env(c, v) for v in ("SLUICE_XDS_CA", "SLUICE_XDS_CERT", "SLUICE_XDS_KEY")]
    if cluster.env(c, "SLUICE_INSECURE_DATA_PLANE") == "1" and not any(tls):
        report.error(who, "SLUICE_INSECURE_DATA_PLANE=1: plaintext to the data-plane port, which serves provider "
                          "credentials; local development only")
    elif not all(tls):
        report.error(who, "xDS mode needs SLUICE_XDS_CA, SLUICE_XDS_CERT and SLUICE_XDS_KEY (mTLS to the "
                          "control plane); the entrypoint refuses to start without them")
    xds_port = port_of(xds) if isinstance(xds, str) else None
    labels = pod_meta.get("labels") or {}
    for policy in cluster.objects:
        if policy.get("kind") != "NetworkPolicy":
            continue
        rules = [r for r in (policy.get("spec") or {}).get("ingress") or []
                 if any(str(p.get("port")) == xds_port for p in r.get("ports") or [])]
        selectors = [f.get("podSelector") for r in rules for f in r.get("from") or []]
        if rules and not any(r.get("from") is None for r in rules) and not any(
                s is not None and all(labels.get(k) == v for k, v in (s.get("matchLabels") or {}).items())
                and not s.get("matchExpressions") for s in selectors):
            wanted = [s.get("matchLabels") for s in selectors if s]
            report.error(who, f"{name_of(policy)} lets only pods labelled {wanted} reach port {xds_port}, and this "
                              "pod's labels do not match: it would never get its configuration")


def check_control_plane(report, cluster, obj, where, pod_spec, c):
    who = f"{where} container {c.get('name')}"
    argv = command_line(c)

    def setting(flag_name, env_name):
        value = flag(argv, flag_name)
        return value if value is not None else cluster.env(c, env_name)

    def source_of(flag_name, env_name):
        return f"--{flag_name}" if flag(argv, flag_name) is not None else env_name

    config_path = flag(argv, "config", "c")
    config = {}
    if config_path:
        text = cluster.mounted_file(pod_spec, c, config_path)
        if isinstance(text, str):
            config = yaml.safe_load(text) or {}

    def from_config(section, key):
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value.startswith("os.environ/"):
            return cluster.env(c, value[len("os.environ/"):])
        return None if value is None else str(value)

    database = setting("database-url", "DATABASE_URL")
    source = source_of("database-url", "DATABASE_URL")
    if database is None:
        database, source = from_config("general_settings", "database_url"), "config.yaml's database_url"
    if database is None:
        database, source = DEFAULT_DATABASE_URL, "the default, no database configured"
    redis = setting("redis-url", "REDIS_URL")
    if redis is None:
        redis = from_config("router_settings", "redis_url") or from_config("router_settings", "redis_host")
    replicas = cluster.max_replicas(obj)
    hpa = cluster.autoscaler(obj)
    if replicas is None:
        many = "one per node (a DaemonSet)"
    elif hpa and replicas > (obj.get("spec") or {}).get("replicas", 1):
        many = f"up to {replicas} replicas ({name_of(hpa)})"
    else:
        many = f"{replicas} replicas"
    if isinstance(database, str) and database.startswith("sqlite:"):
        if replicas is None or replicas > 1:
            report.error(where, f"{many} of the control plane on SQLite ({database}, from {source}). SQLite is "
                                "one file on one pod's volume: every replica would keep its own keys, spend and "
                                "budgets, and a ReadWriteOnce volume cannot be shared by pods on different "
                                "nodes. Run 1 replica, or Postgres and Redis for more "
                                "(deploy/kubernetes/overlays/control-plane-postgres)")
        strategy = ((obj.get("spec") or {}).get("strategy") or {}).get("type", "RollingUpdate")
        if obj.get("kind") == "Deployment" and strategy != "Recreate":
            report.error(where, f"the control plane on SQLite ({database}) with the {strategy} strategy: during "
                                "a rollout two pods open the one file (and wait for its ReadWriteOnce volume); "
                                "use strategy.type: Recreate")
        path = database[len("sqlite:"):].split("?")[0]
        if path.startswith("//"):
            path = path[2:]
        if path and path != ":memory:":
            absolute = posixpath.join("/", path) if not path.startswith("/") else path
            volume = cluster.volume_at(pod_spec, c, posixpath.dirname(absolute))
            if volume is None:
                report.error(who, f"the SQLite file {path} is on no volume: the root filesystem is read-only, and "
                                  "the database would go with the pod; mount a PersistentVolumeClaim there")
            elif "emptyDir" in volume:
                report.warning(who, f"the SQLite file {path} is on an emptyDir: keys and spend go with the pod")
    elif (replicas is None or replicas > 1) and redis is None:
        report.warning(where, f"{many} of the control plane without Redis (REDIS_URL): rate-limit counts stay "
                              "per replica, and a revocation through one replica reaches the others' Envoys only "
                              "when their key cache expires (60 s)")
    if has_flag(argv, "insecure-data-plane"):
        report.error(who, "--insecure-data-plane: the data-plane port serves provider credentials in plaintext to "
                          "anyone who reaches it; local development only")
    elif not (setting("pki-dir", "SLUICE_PKI_DIR") or has_flag(argv, "xds-tls-cert")):
        report.error(who, "the data-plane port needs mTLS: --pki-dir (SLUICE_PKI_DIR) or --xds-tls-cert, "
                          "--xds-tls-key and --xds-client-ca; `sluice serve` does not start without")
    admin = flag(argv, "listen") or DEFAULT_ADMIN_LISTEN
    if is_loopback(admin):
        report.error(who, f"the admin API listens on {admin} (the default): the kubelet's probes and other pods "
                          "cannot reach it; pass --listen 0.0.0.0:4001")
    xds_listen = flag(argv, "xds-listen") or DATA_PLANE_PORT_DEFAULT
    if is_loopback(xds_listen):
        report.error(who, f"the data-plane port listens on {xds_listen} (the default): no Envoy can reach it; "
                          "pass --xds-listen 0.0.0.0:4002")
    for kind in ("readinessProbe", "livenessProbe"):
        probe = c.get(kind) or {}
        grpc = probe.get("grpc")
        if not grpc or str(grpc.get("port")) != port_of(admin):
            report.error(who, f"{kind} must be a grpc probe on the admin port ({port_of(admin)}, --listen), where "
                              "`sluice serve` answers grpc.health.v1")


def check(objects):
    report = Report()
    cluster = Cluster(objects)
    counts = {"objects": len(objects), "workloads": 0, "containers": 0}
    for obj in objects:
        if obj.get("kind") not in WORKLOAD_KINDS:
            continue
        counts["workloads"] += 1
        where = name_of(obj)
        pod_meta, pod_spec = pod_template(obj)
        for field, c in containers(pod_spec):
            counts["containers"] += 1
            check_security(report, where, pod_spec, field, c)
            if is_control_plane(c):
                check_control_plane(report, cluster, obj, where, pod_spec, c)
            elif is_sluice_envoy(c):
                check_sluice_envoy(report, cluster, obj, where, pod_meta, pod_spec, c)
    return report, counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("files", nargs="*", help="rendered manifests (YAML); standard input when none")
    parser.add_argument("--kustomize", metavar="DIR", help="render DIR with `kubectl kustomize` and check that")
    args = parser.parse_args(argv)
    if args.kustomize:
        rendered = subprocess.run(["kubectl", "kustomize", args.kustomize], capture_output=True, text=True)
        if rendered.returncode != 0:
            sys.exit(f"kubectl kustomize {args.kustomize}: {rendered.stderr.strip()}")
        texts = [rendered.stdout]
    elif args.files:
        texts = []
        for path in args.files:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
    else:
        texts = [sys.stdin.read()]
    objects = load(texts)
    report, counts = check(objects)
    for line in report.errors + report.warnings:
        print(line)
    summary = f"{counts['objects']} objects, {counts['workloads']} workloads, {counts['containers']} containers"
    if report.errors:
        print(f"check.py: {len(report.errors)} error(s) in {summary}")
        return 1
    if counts["workloads"] == 0:
        print("check.py: no workload in the input (was it rendered?)")
        return 1
    print(f"check.py: {summary}: OK" + (f" ({len(report.warnings)} warning(s))" if report.warnings else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
