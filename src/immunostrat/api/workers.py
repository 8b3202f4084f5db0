"""Several uvicorn workers on one port, each with a listening socket of its own (``SO_REUSEPORT``).

With one shared listening socket (uvicorn's ``--workers``) every worker wakes on a new connection
and the first to run accepts all that are waiting: asyncio accepts up to the listen backlog at once.
Clients that connect together, as a load balancer's pool or a screening day's workstations do, then
land on one worker: in ``benchmarks/trial.py`` 31 of 32 keep-alive connections went to one worker
while the other served one client, and since a worker randomizes one request at a time, those 31
waited three times as long. With a socket per worker Linux spreads new connections over the
listening sockets by a hash of their addresses (``SO_REUSEPORT``, Linux 3.9).

The supervisor starts the workers (spawned processes), starts a new one in place of any that dies
or hangs, and on SIGINT or SIGTERM stops them (uvicorn finishes the requests in flight) and returns.
A worker shows it is alive from its event loop: uvicorn's main loop ticks every 0.1 s and each tick
writes the time to memory the supervisor reads. A loop that stops ticking (a deadlock, a blocking
call on the loop, a stopped process) stops answering its share of the connections too, so after
``hung_after_s`` without a tick the supervisor kills that worker and starts another. A health check
from a thread of its own (uvicorn's ``--workers`` pings a thread) would not see a blocked loop.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from immunostrat.errors import InputError

logger = logging.getLogger("uvicorn.error")

STOP_GRACE_S = 30.0
"""How long a stopping worker may take to finish its requests before it is killed."""
EARLY_EXIT_S = 10.0
EARLY_EXITS_TO_GIVE_UP = 3
"""A worker that exits this soon after its start, this many times in a row, cannot start (a
database that does not answer, a bad URL): the supervisor stops instead of restarting forever."""
HUNG_AFTER_S = 30.0
"""A serving worker whose event loop has not ticked for this long is killed and replaced. Every
request handler that blocks runs in a thread, so a loop this late is stuck, not busy."""


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


def _worker(db_url: str, host: str, port: int, last_tick: ctypes.c_double) -> None:
    """One worker process: its own socket on the shared port, the service on it until stopped;
    ``last_tick`` gets the monotonic time of each tick of its event loop once it serves."""
    import uvicorn

    class _TickingServer(uvicorn.Server):
        async def on_tick(self, counter: int) -> bool:
            last_tick.value = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
            return await super().on_tick(counter)

    os.environ["IMMUNOSTRAT_DB_URL"] = db_url
    config = uvicorn.Config("immunostrat.api.app:app_from_env", factory=True, host=host, port=port)
    sock = listening_socket(host, port)
    _TickingServer(config).run(sockets=[sock])


class _Worker:
    """A worker process with its start time and the last tick of its event loop (0: not serving yet)."""

    def __init__(self, context: Any, db_url: str, host: str, port: int) -> None:
        self.last_tick: ctypes.c_double = context.RawValue("d", 0.0)
        self.process: BaseProcess = context.Process(
            target=_worker, args=(db_url, host, port, self.last_tick), daemon=False
        )
        self.process.start()
        self.started = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the loop last ticked; 0 while the worker is still starting."""
        tick = float(self.last_tick.value)
        return time.monotonic() - tick if tick > 0 else 0.0


def run_workers(
    db_url: str, host: str, port: int, workers: int, *, hung_after_s: float | None = None
) -> None:
    """Serve with ``workers`` processes until SIGINT or SIGTERM (see the module's docstring);
    ``hung_after_s`` defaults to :data:`HUNG_AFTER_S`."""
    hung_after = HUNG_AFTER_S if hung_after_s is None else hung_after_s
    # Held (bound, never listening) for the supervisor's life: a port already taken fails here,
    # before any worker starts, and no other program can take it between two worker restarts.
    # Connections go only to listening sockets, so this one receives none.
    guard = listening_socket(host, port)
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    running = [_Worker(context, db_url, host, port) for _ in range(workers)]
    logger.info("started %d workers on %s:%d, one socket each", workers, host, port)
    early_exits = 0
    try:
        while not stop.wait(0.5):
            for i, worker in enumerate(running):
                process = worker.process
                if process.is_alive():
                    silent = worker.silent_for()
                    if silent < hung_after:
                        continue
                    logger.warning(
                        "worker %s has not run its event loop for %.0f s: killing it, starting another",
                        process.pid,
                        silent,
                    )
                    process.kill()  # a stuck loop would never handle SIGTERM
                    process.join(STOP_GRACE_S)  # bounded: a process in uninterruptible I/O dies late
                else:
                    lived = time.monotonic() - worker.started
                    early_exits = early_exits + 1 if lived < EARLY_EXIT_S else 0
                    if early_exits >= EARLY_EXITS_TO_GIVE_UP:
                        raise SystemExit(
                            f"workers keep exiting at start (code {process.exitcode}): see above"
                        )
                    logger.warning(
                        "worker %s exited with %s: starting another", process.pid, process.exitcode
                    )
                running[i] = _Worker(context, db_url, host, port)
    finally:
        processes = [w.process for w in running]
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
