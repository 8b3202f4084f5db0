"""Password hashing (bcrypt). Only hashes are stored; bcrypt reads at most 72 bytes."""

from __future__ import annotations

import os

import bcrypt

DEFAULT_ROUNDS = 12


def default_rounds() -> int:
    """Work factor: 12 unless IMMUNOSTRAT_BCRYPT_ROUNDS says otherwise (tests use fewer; minimum 4)."""
    try:
        return max(4, min(16, int(os.environ.get("IMMUNOSTRAT_BCRYPT_ROUNDS", DEFAULT_ROUNDS))))
    except ValueError:
        return DEFAULT_ROUNDS


def hash_password(password: str, rounds: int | None = None) -> str:
    salt = bcrypt.gensalt(rounds=rounds or default_rounds())
    return bcrypt.hashpw(password.encode()[:72], salt).decode()


def verify_password(password: str, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:72], hashed.encode())
    except ValueError:
        return False


_DUMMY: dict[int, str] = {}


def burn_time(password: str) -> None:
    """Spend a comparable time when the user does not exist (no user enumeration by timing)."""
    rounds = default_rounds()
    if rounds not in _DUMMY:
        _DUMMY[rounds] = hash_password(os.urandom(16).hex(), rounds)
    verify_password(password, _DUMMY[rounds])
