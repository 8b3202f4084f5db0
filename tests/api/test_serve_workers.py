"""``immunostrat serve --workers 2``: a listening socket per worker, so that clients that connect
together are spread over the workers; a worker that dies or whose event loop stops is replaced;
SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apiserver import child_pids

from immunostrat.trial.db import get_engine, migrate

TOKEN_KEY = "serve-workers-test-key-0123456789abcdef"
CLIENTS = 32
WORKER_TIMEOUT_S = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workers(supervisor: int) -> list[int]:
    """The supervisor's children that serve (multiprocessing may add a resource tracker)."""
    return [p for p in child_pids(supervisor) if "resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _sockets_on(port: int, state: str) -> set[int]:
    """Inodes of the sockets on local ``port`` in TCP ``state`` (01 established, 0A listening)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == state:
                inodes.add(int(cols[9]))
    return inodes


def _sockets_of(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def _wait_until_up(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail("server did not start")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """One server for the module (its start is most of the time): the spreading test runs first,
    the last test kills a worker and then stops the server."""
    tmp_path = tmp_path_factory.mktemp("serve-workers")
    db_url = f"sqlite:///{tmp_path / 'trial.db'}"
    migrate(get_engine(db_url))
    port = _free_port()
    env = dict(os.environ, IMMUNOSTRAT_TOKEN_KEY=TOKEN_KEY)
    cmd = [str(Path(sys.executable).parent / "immunostrat"), "serve", "--db", db_url]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    cmd += ["--worker-timeout", str(WORKER_TIMEOUT_S)]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 120
        while len(_sockets_on(port, "0A")) < 2:  # the second worker may still be starting
            assert time.monotonic() < deadline, "the second worker does not listen"
            time.sleep(0.3)
        yield proc, port, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_clients_that_connect_together_are_spread_over_the_workers(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, _ = served
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
    try:
        time.sleep(1.0)  # the workers accept
        connections = _sockets_on(port, "01")
        held = {pid: len(_sockets_of(pid) & connections) for pid in _workers(proc.pid)}
        assert len(held) == 2
        assert sum(held.values()) == CLIENTS
        # a hash spreads 32 connections 16 +- 3; one shared socket gave one worker 31 of them
        assert min(held.values()) >= 6, held
    finally:
        for c in clients:
            c.close()


def _replaced(supervisor: int, old: int, within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        now = _workers(supervisor)
        if len(now) == 2 and old not in now:
            return now
        time.sleep(0.3)
    pytest.fail(f"worker {old} was not replaced: {_workers(supervisor)}")


def test_a_worker_whose_event_loop_stops_is_replaced(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, log = served
    frozen = _workers(proc.pid)[0]
    os.kill(frozen, signal.SIGSTOP)  # alive to the kernel, silent to its clients
    stopped_at = time.monotonic()
    try:
        time.sleep(WORKER_TIMEOUT_S / 2)
        assert frozen in _workers(proc.pid)  # not before its time is up
        _replaced(proc.pid, frozen, within_s=WORKER_TIMEOUT_S + 60)
    finally:
        if Path(f"/proc/{frozen}").exists():
            os.kill(frozen, signal.SIGCONT)
    assert time.monotonic() - stopped_at >= WORKER_TIMEOUT_S - 1  # its last tick came just before
    assert _state(frozen) == "zombie"  # killed and reaped
    _wait_until_up(f"http://127.0.0.1:{port}", proc, Path("/dev/null"))
    assert f"worker {frozen} has not run its event loop" in log.read_text()


def test_a_killed_worker_is_replaced_and_sigterm_stops_every_process(
    served: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, _ = served
    first = _workers(proc.pid)
    os.kill(first[0], signal.SIGKILL)
    _replaced(proc.pid, first[0], within_s=120)
    _wait_until_up(f"http://127.0.0.1:{port}", proc, Path("/dev/null"))
    workers = _workers(proc.pid)
    proc.send_signal(signal.SIGTERM)  # the supervisor alone, as a service manager would
    assert proc.wait(60) == 0
    assert not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_a_port_already_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [
            str(Path(sys.executable).parent / "immunostrat"),
            "serve",
            "--db",
            f"sqlite:///{tmp_path / 't.db'}",
        ]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--port" in done.stderr and str(port) in done.stderr and "Address already in use" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
