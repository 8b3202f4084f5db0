"""Users and roles: accounts with bcrypt passwords, sign-in, and the actor a user acts as."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial import audit
from immunostrat.trial.audit import Actor
from immunostrat.trial.errors import Conflict, NotFound
from immunostrat.trial.models import (
    Trial,
    User,
    utcnow,
)
from immunostrat.trial.passwords import burn_time, hash_password, password_problem, verify_password
from immunostrat.trial.schemas import (
    UserIn,
    UserUpdate,
)
from immunostrat.trial.setup import site_by_code, trial_by_id

# --------------------------------------------------------------------------------------------
# users


def create_user(
    session: Session,
    actor: Actor,
    spec: UserIn,
    rounds: int | None = None,
    trial: Trial | None = None,
    password_hash: str | None = None,
) -> User:
    """A user with a bcrypt-hashed password. Pass ``password_hash`` (from
    :func:`~immunostrat.trial.passwords.hash_password`) to hash outside the transaction."""
    if session.scalars(select(User.id).where(User.username == spec.username)).first() is not None:
        raise Conflict(f"user {spec.username!r} exists", field="username")
    site_id: int | None = None
    if spec.site is not None:
        if trial is None and spec.trial_id is not None:
            trial = trial_by_id(session, spec.trial_id)
        if trial is None:
            raise InputError("a site needs its trial", field="trial_id", expected="the trial id of the site")
        site_id = site_by_code(session, trial, spec.site).id
    user = User(
        username=spec.username,
        password_hash=password_hash or hash_password(spec.password, rounds),
        role=spec.role,
        site_id=site_id,
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    audit.append(
        session,
        actor,
        "create",
        "user",
        user.id,
        new={"username": user.username, "role": user.role, "site_id": site_id},
    )
    return user


def update_user(
    session: Session, actor: Actor, user_id: int, spec: UserUpdate, password_hash: str | None = None
) -> User:
    """Deactivate or reactivate a user, change the role or the password (``password_hash`` from
    :func:`~immunostrat.trial.passwords.hash_password`, made outside the transaction). Tokens
    already issued stop working at the next request (the user is re-read each time)."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", field="user_id")
    if user.id == actor.user_id and (spec.active is False or (spec.role or user.role) != user.role):
        raise Conflict("an admin cannot deactivate or re-role themselves", field="user_id")
    old = {"active": user.active, "role": user.role}
    if spec.active is not None:
        user.active = spec.active
    if spec.role is not None:
        user.role = spec.role
    if spec.password is not None:
        problem = password_problem(spec.password, user.username)
        if problem:
            raise InputError(problem, field="password")
        user.password_hash = password_hash or hash_password(spec.password)
    new: dict[str, Any] = {"active": user.active, "role": user.role}
    if spec.password is not None:
        new["password_changed"] = True  # never the password or its hash
    session.flush()
    audit.append(session, actor, "update", "user", user.id, old=old, new=new)
    return user


def password_matches(user: User | None, password: str) -> bool:
    """bcrypt check; a missing or inactive user costs the same time (no user enumeration)."""
    if user is None or not user.active:
        burn_time(password)
        return False
    return verify_password(password, user.password_hash)


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    return user if password_matches(user, password) else None


def actor_for(user: User) -> Actor:
    return Actor(user.username, user.role, user.id, user.site_id)


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "site_id": user.site_id,
        "active": user.active,
    }
