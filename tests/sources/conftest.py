"""Real demo data from ../shared/data, each data set loaded once per session (skipped, with the reason,
only where that folder is absent)."""

from __future__ import annotations

import pytest
from sourcetools import PHYSIONET_TEST_FILES, shared

from immunostrat.sources import SourceData, load_eicu, load_mimic_iv, load_physionet2019


@pytest.fixture(scope="session")
def mimic_demo() -> SourceData:
    return load_mimic_iv(shared("mimic-iv-demo-2.2"))


@pytest.fixture(scope="session")
def eicu_demo() -> SourceData:
    return load_eicu(shared("eicu-crd-demo-2.0.1"))


@pytest.fixture(scope="session")
def physionet_sample() -> SourceData:
    return load_physionet2019(shared("physionet-challenge-2019/training_setB"), limit=PHYSIONET_TEST_FILES)
