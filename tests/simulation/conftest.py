"""Shared virtual population for the simulation tests (built once per session, fixed seed)."""

from __future__ import annotations

import pytest

from immunostrat.simulation.population import VirtualPopulation, generate_population
from immunostrat.simulation.trial import OutcomeTable


@pytest.fixture(scope="session")
def vpop() -> VirtualPopulation:
    return generate_population(400, seed=7, batch=4096)


@pytest.fixture(scope="session")
def outcome_table(vpop: VirtualPopulation) -> OutcomeTable:
    return OutcomeTable(vpop)


@pytest.fixture(scope="session")
def vpop_deactivation() -> VirtualPopulation:
    """The same VPop recipe on the monocyte-deactivation extension (insilico.md 6; not Reynolds 2006)."""
    from immunostrat.simulation.model import MONOCYTE_DEACTIVATION

    return generate_population(400, seed=7, batch=4096, deactivation=MONOCYTE_DEACTIVATION)


@pytest.fixture(scope="session")
def outcome_table_deactivation(vpop_deactivation: VirtualPopulation) -> OutcomeTable:
    return OutcomeTable(vpop_deactivation)
