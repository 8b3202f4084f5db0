"""The protocol engine reads a patient's history from plain samples (concept, time, value), with no
frame query: the same latest-first histories as the polars filter-and-sort it replaced, and the same
classification whichever way the observations arrive (a canonical frame, small or large, or the
trial's canonical observations with naive or aware times)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from immunostrat.concepts import CANONICAL_SCHEMA
from immunostrat.protocols import classify_patient, load_protocol
from immunostrat.protocols.engine import SMALL_FRAME, _history, classify_samples
from immunostrat.trial import eligibility

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
PROTOCOLS = ["immunosep-2025", "mhla-dr-monitoring"]
CONCEPTS = ["ferritin", "mhla_dr", "creatinine", "crp"]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def polars_history(frame: pl.DataFrame, concept: str, at: datetime | None) -> list[tuple[datetime, float]]:
    """The history as the engine read it before (the oracle): filter, then sort by time descending."""
    rows = frame.filter(pl.col("concept") == concept)
    if at is not None:
        rows = rows.filter(pl.col("time") <= at)
    rows = rows.sort("time", descending=True)
    return list(zip(rows["time"].to_list(), rows["value"].to_list(), strict=True))


# hours on a coarse grid, so that samples share a time (ties keep their order)
HOURS = st.integers(-80, 10).map(lambda h: h * 6.0)
VALUES = st.one_of(
    st.sampled_from([100.0, 4420.0, 4420.5, 4999.0, 5000.0, 7999.0, 8000.0, 15000.0, 1.2, 3.5]),
    st.floats(min_value=0, max_value=60000, allow_nan=False),
)
SAMPLE = st.tuples(st.sampled_from(CONCEPTS), HOURS, VALUES)
AT = st.one_of(st.none(), HOURS.map(lambda h: T0 + timedelta(hours=h)))


def frame_of(samples: list[tuple[str, float, float]], patient_id: str = "p1") -> pl.DataFrame:
    rows = [
        {
            "patient_id": patient_id,
            "time": T0 + timedelta(hours=h),
            "concept": c,
            "value": v,
            "unit": "u",
            "source": "test",
            "source_row": i + 1,
        }
        for i, (c, h, v) in enumerate(samples)
    ]
    return pl.DataFrame(rows, schema=CANONICAL_SCHEMA)


def facts(c: Any) -> dict[str, Any]:
    return c.model_dump(mode="json")


@SETTINGS
@given(samples=st.lists(SAMPLE, max_size=12), at=AT)
def test_histories_equal_the_polars_filter_and_sort(
    samples: list[tuple[str, float, float]], at: datetime | None
) -> None:
    frame = frame_of(samples)
    plain = frame.select("concept", "time", "value").rows()
    for concept in CONCEPTS:
        assert _history(plain, concept, at) == polars_history(frame, concept, at)


@SETTINGS
@given(
    samples=st.lists(SAMPLE, max_size=10),
    at=AT,
    protocol_id=st.sampled_from(PROTOCOLS),
    patient=st.fixed_dictionaries(
        {"patient_id": st.just("p1")},
        optional={
            "age": st.sampled_from([30, 64.5, 90]),
            "sex": st.sampled_from(["F", "M"]),
            "weight_kg": st.sampled_from([50, 71.5, 120]),
        },
    ),
)
def test_one_classification_however_the_observations_arrive(
    samples: list[tuple[str, float, float]], at: datetime | None, protocol_id: str, patient: dict[str, Any]
) -> None:
    protocol = load_protocol(protocol_id)
    small = frame_of(samples)
    # the same patient's rows among more than SMALL_FRAME rows of another patient: the polars filter
    crowd = frame_of([("ferritin", 0.0, 1.0)] * (SMALL_FRAME + 1), patient_id="p2")
    large = pl.concat([crowd, small])
    expected = facts(classify_patient(protocol, small, patient, at=at))
    assert facts(classify_patient(protocol, large, patient, patient_id="p1", at=at)) == expected
    plain = [(c, T0 + timedelta(hours=h), v) for c, h, v in samples]
    assert facts(classify_samples(protocol, plain, patient, patient_id="p1", at=at)) == expected


@SETTINGS
@given(
    samples=st.lists(SAMPLE, max_size=8),
    zone=st.sampled_from([None, UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]),
    at=AT,
)
def test_trial_observations_classify_as_their_canonical_frame(
    samples: list[tuple[str, float, float]], zone: timezone | None, at: datetime | None
) -> None:
    """``eligibility.classify`` hands the engine samples, no frame: naive times are UTC, aware ones
    are converted, as the canonical frame stores them."""
    observations = []
    for c, h, v in samples:
        when = T0 + timedelta(hours=h)
        local = when.replace(tzinfo=None) if zone is None else when.astimezone(zone)
        observations.append(eligibility.CanonicalObservation(c, v, "u", v, "u", local))
    patient = {"patient_id": "p1", "age": 64, "sex": "F", "weight_kg": 70}
    frame = eligibility.observation_frame("p1", observations)
    oracle = classify_patient(load_protocol("immunosep-2025"), frame, patient, patient_id="p1", at=at)
    result = eligibility.classify("immunosep-2025", patient, observations, at)
    assert result.endotype == oracle.endotype
    assert result.reasons == [{**r.model_dump(mode="json"), "text": r.text()} for r in oracle.reasons]
    assert result.warnings == oracle.warnings
    assert result.dose_detail == (oracle.dose.model_dump(mode="json") if oracle.dose else None)
    assert result.at == oracle.at


def test_latest_sample_decides_and_ties_keep_their_order() -> None:
    """Two ferritin values at the same time: the first given is the one read first (as polars' sort
    kept them), so the answer does not depend on the sort's luck."""
    at = T0 + timedelta(hours=1)
    samples = [("ferritin", T0, 5000.0), ("ferritin", T0, 3000.0), ("ferritin", T0 - timedelta(hours=2), 9.0)]
    assert _history(samples, "ferritin", at) == [(T0, 5000.0), (T0, 3000.0), (T0 - timedelta(hours=2), 9.0)]
    assert _history(samples, "ferritin", T0 - timedelta(hours=1)) == [(T0 - timedelta(hours=2), 9.0)]
    c = classify_samples(
        load_protocol("immunosep-2025"), samples, {"patient_id": "p1"}, patient_id="p1", at=at
    )
    assert c.endotype == "mals"
