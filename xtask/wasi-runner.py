"""Runs a wasm32-wasip1 test binary under Wasmtime's WASI (PyPI's `wasmtime`, in the project's
.venv): cargo's runner for that target, so sluice-core's unit tests also run as 32-bit wasm.

Node's WASI ran them before; Node 20.20 crashed (SIGSEGV) as a test binary exited after some
sets of tests, every test having passed, and no V8 flag made it reliable (measured 2026-12-07).
"""
import sys

import wasmtime

path, *args = sys.argv[1:]
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = [path, *args]
wasi.inherit_stdout()
wasi.inherit_stderr()
wasi.inherit_env()
store.set_wasi(wasi)
linker = wasmtime.Linker(engine)
linker.define_wasi()
instance = linker.instantiate(store, wasmtime.Module.from_file(engine, path))
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as exit_trap:
    sys.exit(exit_trap.code)
