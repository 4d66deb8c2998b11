"""Exact signs that a wasm VM failed in a test Envoy, for the tests' "no VM failed" checks.

What Envoy 1.40 records when a proxy-wasm VM traps, measured with the trap module of
test_failure_policy.py (whose tests assert each point):

- Its log, always: one error line from the `wasm` logger per failed call into the module,
  `Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable` (a Rust panic
  in the filter ends the same way: proxy-wasm aborts, V8 reports `unreachable`).
- Counters, only under FAIL_RELOAD: `wasm.<plugin>.vm_reload_backoff` counts the requests
  refused while the failed VM waits for its reload, `vm_reload_success` and `vm_reload_failure`
  the reloads.
- Nothing else. Under FAIL_CLOSED, Sluice's default, no counter moves at all: the whole /stats
  before and after a trap differ only in the connection manager's 5xx and connection counts.
  There is no `wasm.envoy.wasm.runtime.v8.failed` (only `.created` and `.active`), which is why
  the old check (that stat absent, or any stat ending in "failed: 0") could never fail.

So "no VM failed" is: every reload counter of the filter and of the service plugin is 0 (read by
exact name: a counter missing from /stats is an error, not a 0), and the log has no failed call.
"""

import re

import httpx

from conftest import NATIVE

# The plugin names in `sluice envoy-config`'s bootstrap: the HTTP filter and the WasmService.
PLUGINS = ("sluice", "sluice_service")
RELOAD_COUNTERS = ("vm_reload", "vm_reload_backoff", "vm_reload_success", "vm_reload_failure")
LOG_KEY = "envoy log: wasm `Function: ... failed:` lines"
# proxy-wasm-cpp-host's message for a failed call into the module, as Envoy's wasm logger
# writes it: `[...][error][wasm] [source/extensions/common/wasm/wasm_vm.cc:38] Function: ...`
FAILED_CALL = re.compile(r"\]\[(?:error|critical)\]\[wasm\] \[[^\]]*\] Function: \S+ failed: ")


def counters(admin, names):
    """The exact values of the named counters from Envoy's admin /stats."""
    text = httpx.get(f"{admin}/stats", timeout=5).text
    values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    missing = [name for name in names if name not in values]
    assert not missing, f"Envoy reports no {missing} (renamed?)"
    return {name: int(values[name]) for name in names}


def reload_counters(admin, plugins=PLUGINS):
    return counters(admin, [f"wasm.{p}.{c}" for p in plugins for c in RELOAD_COUNTERS])


def failed_calls(log_path):
    """Envoy's log lines for failed calls into a wasm module."""
    return [line for line in log_path.read_text(errors="replace").splitlines() if FAILED_CALL.search(line)]


def vm_failures(gw, plugins=PLUGINS):
    """Every sign of a failed VM in `gw`'s Envoy, by name: all 0 when none failed."""
    return {**reload_counters(gw.admin, plugins), LOG_KEY: len(failed_calls(gw.log_path))}


def assert_no_vm_failed(gw, plugins=PLUGINS):
    if NATIVE:
        # No VM in the native build: a module that failed (a panic) is an Envoy that died.
        assert gw.proc.poll() is None, f"Envoy died: {gw.log_path.read_text(errors='replace')[-2000:]}"
        assert httpx.get(f"{gw.admin}/ready", timeout=5).status_code == 200
        return
    failures = vm_failures(gw, plugins)
    assert not any(failures.values()), f"a wasm VM failed: {failures}; {failed_calls(gw.log_path)[-3:]}"
