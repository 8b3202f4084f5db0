"""Passwords: one normalisation rule, a minimum policy, and bcrypt hashes of the whole password.

The rule (NIST SP 800-63B-4, section 3.1.1.2): a password is taken as typed, spaces included, in
Unicode NFKC (so the same characters typed on another keyboard match); at least 15 characters when
it is the only factor, at most 256 (at least 64 must be allowed); no composition rules, but values
that are common, guessable or built from the username or the service's name are refused (zxcvbn's
lists and patterns, score of at least 3 of 4).

bcrypt reads at most 72 bytes, so two long passwords with the same first 72 bytes would match: the
NFKC password's SHA-256 (base64, 44 bytes) is what bcrypt hashes, marked ``sha256+`` in front of the
bcrypt string. Hashes stored before the marker existed are still checked the old way.
"""

from __future__ import annotations

import base64
import hashlib
import os
import unicodedata

import bcrypt

DEFAULT_ROUNDS = 12
MIN_PASSWORD_CHARS = 15
MAX_PASSWORD_CHARS = 256
MIN_STRENGTH_SCORE = 3
SERVICE_NAME = "immunostrat"
SERVICE_WORDS = (SERVICE_NAME, "immunosep", "sepsis", "trial")
PREHASH_MARK = "sha256+"


def default_rounds() -> int:
    """Work factor: 12 unless IMMUNOSTRAT_BCRYPT_ROUNDS says otherwise (tests use fewer; minimum 4)."""
    try:
        return max(4, min(16, int(os.environ.get("IMMUNOSTRAT_BCRYPT_ROUNDS", DEFAULT_ROUNDS))))
    except ValueError:
        return DEFAULT_ROUNDS


def normalise_password(password: str) -> str:
    """The one rule, at creation and at sign-in alike: NFKC, nothing stripped."""
    return unicodedata.normalize("NFKC", password)


def password_problem(password: str, username: str | None = None) -> str | None:
    """Why ``password`` is refused for ``username``, or None when it meets the policy."""
    text = normalise_password(password)
    if len(text) < MIN_PASSWORD_CHARS:
        return f"at least {MIN_PASSWORD_CHARS} characters are required (a pass phrase is fine)"
    if len(text) > MAX_PASSWORD_CHARS:
        return f"at most {MAX_PASSWORD_CHARS} characters"
    for word, name in ((username, "the username"), (SERVICE_NAME, "the service's name")):
        if word and word.casefold() in text.casefold():
            return f"the password must not contain {name}"
    from zxcvbn import zxcvbn  # its word lists take a while to load: only when a password is set

    context = [*SERVICE_WORDS, *([username] if username else [])]
    # zxcvbn's matchers are quadratic in the length: the first 100 characters judge the strength
    result = zxcvbn(text[:100], user_inputs=context)
    if int(result["score"]) < MIN_STRENGTH_SCORE:
        hint = (result.get("feedback") or {}).get("warning") or "too easy to guess"
        return f"the password is too easy to guess: {hint}".rstrip(": ")
    return None


def _prehashed(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(normalise_password(password).encode()).digest())


def hash_password(password: str, rounds: int | None = None) -> str:
    salt = bcrypt.gensalt(rounds=rounds or default_rounds())
    return PREHASH_MARK + bcrypt.hashpw(_prehashed(password), salt).decode()


def verify_password(password: str, hashed: str) -> bool:
    try:
        if hashed.startswith(PREHASH_MARK):
            return bcrypt.checkpw(_prehashed(password), hashed[len(PREHASH_MARK) :].encode())
        return bcrypt.checkpw(password.encode()[:72], hashed.encode())  # hashes made before the mark
    except ValueError:
        return False


_DUMMY: dict[int, str] = {}


def burn_time(password: str) -> None:
    """Spend a comparable time when the user does not exist (no user enumeration by timing)."""
    rounds = default_rounds()
    if rounds not in _DUMMY:
        _DUMMY[rounds] = hash_password(os.urandom(16).hex(), rounds)
    verify_password(password, _DUMMY[rounds])
