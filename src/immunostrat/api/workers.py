"""Several uvicorn workers on one port, each with a listening socket of its own (``SO_REUSEPORT``).

With one shared listening socket (uvicorn's ``--workers``) every worker wakes on a new connection
and the first to run accepts all that are waiting: asyncio accepts up to the listen backlog at once.
Clients that connect together, as a load balancer's pool or a screening day's workstations do, then
land on one worker: in ``benchmarks/trial.py`` 31 of 32 keep-alive connections went to one worker
while the other served one client, and since a worker randomizes one request at a time, those 31
waited three times as long. With a socket per worker Linux spreads new connections over the
listening sockets by a hash of their addresses (``SO_REUSEPORT``, Linux 3.9).

The supervisor starts the workers (spawned processes), starts a new one in place of any that dies,
and on SIGINT or SIGTERM stops them (uvicorn finishes the requests in flight) and returns.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from immunostrat.errors import InputError

logger = logging.getLogger("uvicorn.error")

STOP_GRACE_S = 30.0
"""How long a stopping worker may take to finish its requests before it is killed."""
EARLY_EXIT_S = 10.0
EARLY_EXITS_TO_GIVE_UP = 3
"""A worker that exits this soon after its start, this many times in a row, cannot start (a
database that does not answer, a bad URL): the supervisor stops instead of restarting forever."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` (not yet listening).

    Accepted connections inherit ``TCP_NODELAY`` from it (Linux): uvicorn leaves Nagle's algorithm
    on, and every response written in two parts (headers, body) then waited ~40 ms for the client's
    delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            field="--port",
            value=port,
            expected="a free port (or another --host / --port)",
        ) from exc
    return sock


def _worker(db_url: str, host: str, port: int) -> None:
    """One worker process: its own socket on the shared port, the service on it until stopped."""
    import uvicorn

    os.environ["IMMUNOSTRAT_DB_URL"] = db_url
    config = uvicorn.Config("immunostrat.api.app:app_from_env", factory=True, host=host, port=port)
    sock = listening_socket(host, port)
    uvicorn.Server(config).run(sockets=[sock])


def run_workers(db_url: str, host: str, port: int, workers: int) -> None:
    """Serve with ``workers`` processes until SIGINT or SIGTERM (see the module's docstring)."""
    # Held (bound, never listening) for the supervisor's life: a port already taken fails here,
    # before any worker starts, and no other program can take it between two worker restarts.
    # Connections go only to listening sockets, so this one receives none.
    guard = listening_socket(host, port)
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    started_at: dict[int, float] = {}

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(db_url, host, port), daemon=False)
        process.start()
        started_at[id(process)] = time.monotonic()
        return process

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    logger.info("started %d workers on %s:%d, one socket each", workers, host, port)
    early_exits = 0
    try:
        while not stop.wait(0.5):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                lived = time.monotonic() - started_at.pop(id(process))
                early_exits = early_exits + 1 if lived < EARLY_EXIT_S else 0
                if early_exits >= EARLY_EXITS_TO_GIVE_UP:
                    raise SystemExit(f"workers keep exiting at start (code {process.exitcode}): see above")
                logger.warning("worker %s exited with %s: starting another", process.pid, process.exitcode)
                processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join()
        guard.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
