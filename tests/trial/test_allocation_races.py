"""Randomizations that meet: the participant's row, the stratum's and the trial's, each taken by the
UPDATE that changes it, decide between requests that overlap (PostgreSQL, two real connections);
the trial's allocation counter after a migration of a trial that already allocated."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from trialdata import add_eligible

from immunostrat.trial import service
from immunostrat.trial.audit import Actor, verify_chain
from immunostrat.trial.db import downgrade, get_engine, migrate, transaction
from immunostrat.trial.models import Allocation, Participant, Trial
from immunostrat.trial.ops import init_trial
from immunostrat.trial.schemas import TrialSpec, parse

INVESTIGATOR = Actor("ina", "investigator")
SEED = bytes(range(32))


def _setup(url: str) -> int:
    sites = [{"code": "S1", "name": "Site one"}]
    spec = parse(TrialSpec, {"code": "T1", "title": "races", "sites": sites, "slots_per_stratum": 24})
    return init_trial(url, spec, seed=SEED).trial_id


def _blocked_behind(url: str, trial_id: int, hold: threading.Event, first: int, key: str) -> None:
    """Randomize ``first`` and keep the transaction open until ``hold`` is set."""
    with transaction(get_engine(url)) as s:
        service.randomize(s, INVESTIGATOR, trial_id, first, idempotency_key=key)
        hold.wait(30)


@pytest.mark.postgres
def test_a_retry_that_waited_for_the_original_gets_its_allocation(pg_url: str) -> None:
    trial_id = _setup(pg_url)
    with transaction(get_engine(pg_url)) as s:
        (pid,) = add_eligible(s, trial_id, "S1", "mals", 1)
    hold = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        original = pool.submit(_blocked_behind, pg_url, trial_id, hold, pid, "k-1")
        # the retry passes the checks before the lock (nothing committed yet), then waits for the row
        retry = pool.submit(_randomize, pg_url, trial_id, pid, "k-1")
        threading.Timer(1.0, hold.set).start()
        original.result(30)
        again = retry.result(30)
    assert again.replayed
    with transaction(get_engine(pg_url)) as s:
        alloc = s.scalars(select(Allocation).where(Allocation.participant_id == pid)).one()
        assert (again.sequence, again.kit_number) == (alloc.sequence, alloc.kit.kit_number)
        assert s.scalar(select(func.count()).select_from(Allocation)) == 1
        assert verify_chain(s).ok


@pytest.mark.postgres
def test_a_key_used_meanwhile_for_another_participant_is_refused_and_nothing_is_written(
    pg_url: str,
) -> None:
    trial_id = _setup(pg_url)
    with transaction(get_engine(pg_url)) as s:
        first, second = add_eligible(s, trial_id, "S1", "mals", 2)
    hold = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        original = pool.submit(_blocked_behind, pg_url, trial_id, hold, first, "k-shared")
        other = pool.submit(_randomize, pg_url, trial_id, second, "k-shared")
        threading.Timer(1.0, hold.set).start()
        original.result(30)
        with pytest.raises(IntegrityError, match="uq_allocations_idempotency"):
            other.result(30)
    with transaction(get_engine(pg_url)) as s:
        assert s.get(Participant, second).status == "eligible"  # the claim was rolled back
        assert s.scalar(select(func.count()).select_from(Allocation)) == 1
        assert s.get(Trial, trial_id).allocations_made == 1
    # the refused request used no slot: the next allocation takes sequence 2
    assert _randomize(pg_url, trial_id, second, "k-2").sequence == 2


def test_parallel_randomizations_of_one_stratum_take_consecutive_slots(db_url: str) -> None:
    trial_id = _setup(db_url)
    with transaction(get_engine(db_url)) as s:
        ids = add_eligible(s, trial_id, "S1", "immunoparalysis", 12)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda pid: _randomize(db_url, trial_id, pid, f"p-{pid}"), ids))
    assert sorted(r.sequence for r in results) == list(range(1, 13))
    with transaction(get_engine(db_url)) as s:
        rows = s.scalars(select(Allocation).order_by(Allocation.sequence)).all()
        assert [a.details["seq"] for a in rows] == list(range(1, 13))  # slot order = commit order
        assert s.get(Trial, trial_id).allocations_made == 12
        assert verify_chain(s).ok


def test_the_counter_migration_counts_the_allocations_already_made(db_url: str) -> None:
    trial_id = _setup(db_url)
    with transaction(get_engine(db_url)) as s:
        ids = add_eligible(s, trial_id, "S1", "mals", 4)
    for pid in ids[:3]:
        _randomize(db_url, trial_id, pid, None)
    engine = get_engine(db_url)
    downgrade(engine, "0006")
    migrate(engine)
    with transaction(engine) as s:
        assert s.get(Trial, trial_id).allocations_made == 3
    assert _randomize(db_url, trial_id, ids[3], None).sequence == 4


def _randomize(url: str, trial_id: int, pid: int, key: str | None) -> service.AllocationResult:
    with transaction(get_engine(url)) as s:
        return service.randomize(s, INVESTIGATOR, trial_id, pid, idempotency_key=key)
