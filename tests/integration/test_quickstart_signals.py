"""`cargo xtask run` leaves nothing behind: SIGINT, SIGTERM and SIGHUP stop every child it
started (and it exits without an error line), SIGKILL takes the children with it (their
parent-death signal), and a port already taken fails the start with a message that names it.

Each test runs the real quickstart through cargo, as a person would, on ports of its own
(`SLUICE_QUICKSTART_BASE_PORT`, state in `.sluice/base-N/`): it never meets a developer's
quickstart on the default ports, nor the smoke run that `cargo xtask test` does after these
tests. The children are found in /proc (Linux), so the test can tell they are gone.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CARGO = os.environ.get("CARGO", "cargo")
# base .. base+5: Envoy's listener, the control plane's admin API, xDS and metrics, the mock
# provider, Envoy's admin (xtask/src/quickstart.rs).
PORTS = 6
# What `cargo xtask run` starts, as /proc/<pid>/comm names them (15 characters at most).
CHILDREN = ["envoy", "sluice", "sluice-mock-pro"]
STARTUP = 180  # seconds: `cargo xtask run` runs `cargo xtask setup` first (a no-op once built)

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and relies on PR_SET_PDEATHSIG"),
    pytest.mark.skipif(shutil.which(CARGO) is None, reason="needs cargo"),
]


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def proc_stat(pid):
    """(comm, state, ppid, start time) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return comm, fields[0], int(fields[1]), int(fields[19])


def children_of(parent):
    """{pid: (comm, start time)} of the live processes whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[2] == parent and stat[1] != "Z":
                found[int(entry.name)] = (stat[0], stat[3])
    return found


def alive(pid, start_time):
    """The same process (not a reused pid), still running: a zombie holds no port."""
    stat = proc_stat(pid)
    return stat is not None and stat[3] == start_time and stat[1] not in ("Z", "X")


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Quickstart:
    """One `cargo xtask run` on a free run of ports, its output in files."""

    def __init__(self, tmp_path):
        for _ in range(100):
            base = random.randrange(20_000, 32_000, 16)  # below Linux's ephemeral ports
            if all(port_free(base + i) for i in range(PORTS)):
                break
        else:
            pytest.skip("no run of free ports for a quickstart")
        self.base = base
        self.ports = [base + i for i in range(PORTS)]
        self.state = ROOT / ".sluice" / f"base-{base}"
        self.out_path, self.err_path = tmp_path / "stdout", tmp_path / "stderr"
        self.proc = None
        self.children = {}

    def start(self):
        env = {**os.environ, "SLUICE_QUICKSTART_BASE_PORT": str(self.base)}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            # Its own session: a signal to its group is what a terminal's Ctrl-C sends.
            self.proc = subprocess.Popen([CARGO, "xtask", "run"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        return self

    def out(self):
        return self.out_path.read_text(errors="replace")

    def err(self):
        return self.err_path.read_text(errors="replace")

    def wait_running(self):
        """Until it says it is running; records its children (cargo has exec'd into xtask)."""
        ok = wait_until(lambda: "Press Ctrl-C to stop." in self.out() or self.proc.poll() is not None, STARTUP)
        assert ok and self.proc.poll() is None, f"the quickstart did not start:\n{self.err()[-3000:]}"
        self.children = children_of(self.proc.pid)
        assert sorted(comm for comm, _ in self.children.values()) == CHILDREN, self.children
        taken = [port for port in self.ports if port_free(port)]
        assert not taken, f"nothing listens on {taken}"
        # And it serves: the printed key gets a completion from the mock through Envoy.
        lines = self.out().splitlines()
        key = lines[next(i for i, line in enumerate(lines) if line.startswith("An API key")) + 1].strip()
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}

        def served():
            try:
                return httpx.post(f"http://127.0.0.1:{self.base}/v1/chat/completions", json=chat, timeout=5,
                                  headers={"Authorization": f"Bearer {key}"}).status_code == 200
            except httpx.HTTPError:
                return False
        assert wait_until(served, 30), "the quickstart never served a chat request"

    def cleanup(self):
        """Whatever the test did: nothing left running, no state left in .sluice/."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid, (_, start_time) in self.children.items():
            if alive(pid, start_time):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def quickstart(tmp_path):
    qs = Quickstart(tmp_path)
    yield qs
    qs.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL],
                         ids=lambda s: s.name)
def test_a_signal_leaves_no_child_and_no_port_behind(quickstart, sig):
    quickstart.start().wait_running()
    pid = quickstart.proc.pid

    started = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(pid, sig)  # a terminal's Ctrl-C: to the foreground process group
    else:
        os.kill(pid, sig)  # a supervisor, a closed terminal, the OOM killer
    code = quickstart.proc.wait(timeout=30)
    exited = time.monotonic() - started

    # Every child is gone (stopped by xtask, or by the kernel after a SIGKILL) and every port
    # is free again, within seconds.
    assert wait_until(lambda: not any(alive(p, t) for p, (_, t) in quickstart.children.items()), 5), \
        {p: c for p, (c, t) in quickstart.children.items() if alive(p, t)}
    assert wait_until(lambda: all(port_free(p) for p in quickstart.ports), 5), \
        [p for p in quickstart.ports if not port_free(p)]
    assert exited < 10, f"xtask took {exited:.1f} s to exit"
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        return
    # Stopped on purpose: 128 + the signal, as a shell reports it, and no error line.
    assert code == 128 + sig, (code, quickstart.err()[-2000:])
    assert "xtask: error" not in quickstart.err()
    assert f"xtask: stopped by {sig.name}" in quickstart.err()


def test_a_taken_port_is_named_before_anything_starts(quickstart):
    taken = quickstart.base + 1  # the control plane's admin API
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        quickstart.start()
        code = quickstart.proc.wait(timeout=STARTUP)
    err = quickstart.err()
    assert code == 1, err[-2000:]
    assert (f"xtask: error: port {taken} (the control plane's admin API) is in use: is another "
            f"`cargo xtask run` still running? (`ss -ltnp 'sport = :{taken}'`)") in err
    # Nothing was started: no child, no state, every other port still free.
    assert not children_of(quickstart.proc.pid)
    assert not quickstart.state.exists()
    assert all(port_free(p) for p in quickstart.ports)
