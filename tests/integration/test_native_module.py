"""The native build's first step (issue 15): the pinned Envoy loads a Rust dynamic module and runs it.

`tests/native-noop` (`SLUICE_NATIVE_NOOP`, the .so `cargo xtask setup` builds) does the no-op wasm
filter's work natively: `authorization` := `x-bench-provider-key`. Two Envoys: the front one runs
the module through `envoy.filters.http.dynamic_modules` then the router; the upstream one answers
with a `direct_response` and echoes the `authorization` it received in a response header, so the
test sees what the module wrote arrive upstream.

The ABI check is strict here: Envoy 1.40 only warns when a module's ABI version differs from its
own, so the test requires Envoy's "ABI version v0.2.0 matched" line.
"""

import os
import subprocess
import time

import httpx
import pytest

from conftest import free_port, stop_all

ABI_MATCHED = "Dynamic module ABI version v0.2.0 matched."
SEEN = "x-upstream-saw-authorization"


def front_config(port, admin, upstream_port, module):
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: front
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: front
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: upstream}}
                http_filters:
                  - name: envoy.filters.http.dynamic_modules
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
                      dynamic_module_config:
                        module: {{local: {{filename: "{module}"}}}}
                      filter_name: sluice-noop
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}
"""


def upstream_config(port, admin):
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: upstream
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          direct_response: {{status: 200, body: {{inline_string: "upstream"}}}}
                          response_headers_to_add:
                            - header: {{key: {SEEN}, value: "%REQ(authorization)%"}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def start_envoy(envoy, config_path, log_path, admin, procs):
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [envoy, "-c", str(config_path), "--disable-hot-restart", "--concurrency", "1", "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=log)
    procs.append(proc)
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, f"Envoy exited: {log_path.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"Envoy never became ready: {log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    module = os.environ.get("SLUICE_NATIVE_NOOP")
    if not module:
        pytest.skip("SLUICE_NATIVE_NOOP is not set: no native no-op module (.so) to load "
                    "(cargo xtask setup builds it; cargo xtask test sets it)")
    envoy = os.environ.get("ENVOY_BIN")
    if not envoy:
        pytest.fail("set ENVOY_BIN (cargo xtask test does this)")
    assert os.path.isfile(module), f"SLUICE_NATIVE_NOOP={module} does not exist"
    workdir = tmp_path_factory.mktemp("native")
    up_port, up_admin, port, admin = free_port(), free_port(), free_port(), free_port()
    (workdir / "upstream.yaml").write_text(upstream_config(up_port, up_admin))
    (workdir / "front.yaml").write_text(front_config(port, admin, up_port, module))
    procs = []
    try:
        start_envoy(envoy, workdir / "upstream.yaml", workdir / "upstream.log", up_admin, procs)
        start_envoy(envoy, workdir / "front.yaml", workdir / "front.log", admin, procs)
        yield {"url": f"http://127.0.0.1:{port}", "log": workdir / "front.log"}
    finally:
        stop_all(procs)


def test_envoy_loads_the_module_at_its_own_abi_version(native):
    log = native["log"].read_text(errors="replace")
    assert ABI_MATCHED in log, f"no '{ABI_MATCHED}' in Envoy's log:\n{log[-3000:]}"
    assert "is deprecated" not in log


def test_the_module_writes_the_provider_key_into_authorization(native):
    r = httpx.get(native["url"] + "/v1/models",
                  headers={"authorization": "Bearer client-key", "x-bench-provider-key": "Bearer provider-key"},
                  timeout=10)
    assert r.status_code == 200, r.text
    assert r.text == "upstream"
    assert r.headers.get(SEEN) == "Bearer provider-key"


def test_without_the_key_the_module_removes_authorization(native):
    # As the wasm no-op filter does (`set_http_request_header_bytes("authorization", None)`).
    r = httpx.get(native["url"] + "/v1/models", headers={"authorization": "Bearer client-key"}, timeout=10)
    assert r.status_code == 200, r.text
    assert SEEN not in r.headers, r.headers
