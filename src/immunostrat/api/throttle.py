"""Sign-in throttling: failed sign-ins are counted per username and per client address in a moving
window (limits in the ``limits`` library's notation, counts in the service's database); past the
limit ``POST /token`` answers 429 with ``Retry-After`` before the password is checked (so a guesser
also stops costing bcrypt time).

Defaults: 10 failures per username and 100 per address in 15 minutes. NIST SP 800-63B-4
section 3.2.2 requires limiting consecutive failed attempts on one account to no more than 100;
10 in 15 minutes keeps an online guesser to about 1,000 guesses a day per account, while a user
who mistypes a few times is not stopped (a success clears that username's count). The address
limit is looser because one address can be a whole hospital behind a NAT. Both are settings:
``IMMUNOSTRAT_LOGIN_LIMIT_USER`` and ``IMMUNOSTRAT_LOGIN_LIMIT_ADDRESS`` (``limits`` notation,
e.g. ``10 per 15 minutes``).

The counts live in the service's database (a small table on PostgreSQL; on SQLite in a file of its
own beside the database, ``DB.sign-in``, so that a failed sign-in never waits for the database's one
write lock), so every worker and process of one service shares them and a restart keeps them: the
limit holds whichever worker answers. Behind a reverse proxy the client address is the one
uvicorn's proxy headers give (``--forwarded-allow-ips``: only the proxy's address may set it).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from limits import RateLimitItem, parse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from immunostrat.errors import InputError
from immunostrat.trial.db import SignInFailureStore

USER_LIMIT_ENV = "IMMUNOSTRAT_LOGIN_LIMIT_USER"
ADDRESS_LIMIT_ENV = "IMMUNOSTRAT_LOGIN_LIMIT_ADDRESS"
DEFAULT_USER_LIMIT = "10 per 15 minutes"
DEFAULT_ADDRESS_LIMIT = "100 per 15 minutes"
SIGN_IN_PATHS = ("/token",)


@dataclass(frozen=True)
class LoginLimits:
    """How many failed sign-ins are allowed per username and per client address, in what window."""

    per_user: RateLimitItem
    per_address: RateLimitItem

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoginLimits:
        env = os.environ if env is None else env
        return cls(
            _limit(env.get(USER_LIMIT_ENV) or DEFAULT_USER_LIMIT, USER_LIMIT_ENV),
            _limit(env.get(ADDRESS_LIMIT_ENV) or DEFAULT_ADDRESS_LIMIT, ADDRESS_LIMIT_ENV),
        )


def _limit(text: str, name: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise InputError(
            "not a rate limit", field=name, value=text, expected="e.g. '10 per 15 minutes'"
        ) from None


class SignInCounts:
    """The failed sign-ins per username and per address, kept in the service's database
    (:class:`~immunostrat.trial.db.SignInFailureStore`) so that every worker and process of the service
    counts together, and shared by every sign-in form of one app (``app.state.sign_in_counts``:
    ``POST /token`` and the pages' sign-in count together, so switching between them gains an
    attacker nothing). The window is a moving one: a key is refused while it has ``amount`` failures
    in the last ``window`` seconds."""

    def __init__(self, engine: Engine, limits: LoginLimits | None = None) -> None:
        self.limits = limits or LoginLimits.from_env()
        self.store = SignInFailureStore(engine)

    def _keys(self, username: str | None, address: str | None) -> tuple[tuple[RateLimitItem, str, str], ...]:
        user_key = "user:" + hashlib.sha256((username or "").encode()).hexdigest()
        return (
            (self.limits.per_user, user_key, "this username"),
            (self.limits.per_address, "address:" + (address or "unknown")[:64], "this address"),
        )

    def refused(self, username: str | None, address: str | None) -> tuple[int, str] | None:
        """(seconds to wait, "this username" or "this address") when a limit is reached."""
        now_s = time.time()
        for item, key, whom in self._keys(username, address):
            window_s = item.get_expiry()
            times = self.store.times_since(key, now_s - window_s)
            if len(times) >= item.amount:
                # free again when the failure that keeps the count at the limit leaves the window
                oldest_counted_s = times[len(times) - item.amount]
                return max(1, math.ceil(oldest_counted_s + window_s - now_s)), whom
        return None

    def failed(self, username: str | None, address: str | None) -> None:
        keys = self._keys(username, address)
        longest_s = max(item.get_expiry() for item, _, _ in keys)
        now_s = time.time()
        self.store.add([key for _, key, _ in keys], now_s, now_s - longest_s)

    def succeeded(self, username: str | None) -> None:
        _, key, _ = self._keys(username, None)[0]
        self.store.clear(key)


class LoginThrottle:
    """ASGI middleware over the sign-in routes (see the module docstring)."""

    def __init__(self, app: ASGIApp, counts: SignInCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in SIGN_IN_PATHS:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        replay = _replayer(body, receive)
        # the form parsed as the route parses it (urlencoded or multipart), so no encoding escapes
        try:
            form = await Request(scope, _replayer(body, receive)).form()
            username = form.get("username")
            await form.close()
        except Exception:  # a body that is no form: the route answers it, counted by address
            username = None
        client = scope.get("client")
        address = client[0] if client else None
        name = None if username is None else str(username)
        refused = await run_in_threadpool(self.counts.refused, name, address)  # a database read
        if refused is not None:
            wait_s, whom = refused
            response = JSONResponse(
                status_code=429,
                content={
                    "detail": f"too many failed sign-ins for {whom}: try again in {wait_s} s",
                    "field": "username" if whom == "this username" else None,
                },
                headers={"Retry-After": str(wait_s)},
            )
            await response(scope, replay, send)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                # counted before the answer leaves: a client that sees its 401 and tries again at
                # once, on any worker, finds the failure already committed
                status = int(message["status"])
                if status == 401:
                    await run_in_threadpool(self.counts.failed, name, address)
                elif status == 200:
                    await run_in_threadpool(self.counts.succeeded, name)
            await send(message)

        await self.app(scope, replay, watch)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replayer(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
