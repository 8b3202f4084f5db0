"""Input that cannot be misread, at the concept layer: one resolver for concept names (id, LOINC,
alias, site code), ISO-only times or a named format, delimiter detection, the unit-slip floor."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from immunostrat.concepts import load_concepts, observations_from_records, read_observations
from immunostrat.concepts.dictionary import name_key, parse_dictionary
from immunostrat.concepts.observations import detect_delimiter, parse_times
from immunostrat.concepts.site_codes import load_site_codes, parse_site_codes
from immunostrat.errors import InputError

EXAMPLE = Path(__file__).parents[2] / "src/immunostrat/concepts/site-codes.example.yaml"
T0 = "2025-03-01T08:00:00Z"


def row(concept: str, value: str, unit: str = "", time: str = T0) -> dict[str, str]:
    return {"patient_id": "p1", "time": time, "concept": concept, "value": value, "unit": unit}


# ---------------------------------------------------------------- concept names


@pytest.mark.parametrize(
    ("name", "concept_id"),
    [
        ("ferritin", "ferritin"),
        ("Ferritin", "ferritin"),
        (" FERRITIN ", "ferritin"),
        ("2276-4", "ferritin"),
        ("20567-4", "ferritin"),
        ("HLA-DR", "mhla_dr"),
        ("mHLA-DR", "mhla_dr"),
        ("monocyte HLA-DR", "mhla_dr"),
        ("mhla-dr", "mhla_dr"),
        ("IMMUNOSTRAT-MHLADR-ABC", "mhla_dr"),
        ("HLA-DR+ monocytes", "mhla_dr_percent"),
        ("noradrenaline", "norepinephrine_rate"),
        ("14682-9", "creatinine"),
    ],
)
def test_one_resolver_reads_ids_loinc_codes_and_aliases(name: str, concept_id: str) -> None:
    assert load_concepts().resolve(name) == concept_id


def test_every_alias_resolves_to_its_own_concept() -> None:
    concepts = load_concepts()
    for concept in concepts:
        for name in (concept.id, *concept.loinc, *concept.aliases):
            assert concepts.resolve(name) == concept.id, name


def test_an_ambiguous_alias_stops_the_dictionary_loading() -> None:
    raw: dict[str, Any] = {
        "concepts": {
            "a": {"description": "A", "category": "x", "canonical_unit": "1", "units": {"1": "1"},
                  "plausible": [0, 1], "local_code": "A", "aliases": ["shared name"]},
            "b": {"description": "B", "category": "x", "canonical_unit": "1", "units": {"1": "1"},
                  "plausible": [0, 1], "local_code": "B", "aliases": ["Shared-Name"]},
        }
    }  # fmt: skip
    with pytest.raises(ValueError, match="ambiguous"):
        parse_dictionary(raw)
    raw["concepts"]["b"]["aliases"] = ["other name"]
    assert parse_dictionary(raw).resolve("SHARED_NAME") == "a"


def test_name_key_ignores_case_spaces_underscores_and_hyphens() -> None:
    assert name_key(" mHLA-DR ") == name_key("mhla_dr") == name_key("MHLA DR")
    assert name_key("ferritin") != name_key("ferritn")


def test_unknown_concept_names_the_nearest_ids() -> None:
    with pytest.raises(InputError) as info:
        observations_from_records([row("Feritin", "900", "ng/mL")])
    error = info.value
    assert (error.row, error.field, error.value) == (1, "concept", "Feritin")
    assert error.expected is not None and "nearest: ferritin" in error.expected
    with pytest.raises(InputError) as info:
        observations_from_records([row("qqqqqq", "900", "ng/mL")])
    assert info.value.expected is not None and "nearest" not in info.value.expected


def test_resolved_concepts_are_stored_by_id() -> None:
    result = observations_from_records([row("Ferritin", "900", "ng/mL"), row("2276-4", "1000", "ug/L")])
    assert result.observations["concept"].to_list() == ["ferritin", "ferritin"]


# ---------------------------------------------------------------- unit-slip floor


@pytest.mark.parametrize(("value", "unit", "refused"), [
    ("3.2", "AB/C", True), ("99", "AB/C", True), ("199.9", "molecules/cell", True),
    ("200", "AB/C", False), ("3200", "AB/C", False), ("0", "AB/C", True),
])  # fmt: skip
def test_mhla_dr_unit_slip_floor(value: str, unit: str, refused: bool) -> None:
    records = [row("mhla_dr", value, unit)]
    if not refused:
        assert observations_from_records(records).observations["value"].to_list() == [float(value)]
        return
    with pytest.raises(InputError) as info:
        observations_from_records(records)
    error = info.value
    assert (error.row, error.field, error.value) == (1, "value", value)
    assert "below 200 AB/C" in error.message and "Quantibrite" in error.message
    assert error.expected is not None
    assert f"{float(value) * 1000:,.0f} AB/C" in error.expected and "mhla_dr_percent" in error.expected


def test_the_floor_is_data_with_its_reason() -> None:
    floor = load_concepts()["mhla_dr"].unit_slip_floor
    assert floor is not None and floor.below == 200 and "A3" in floor.source
    # Every value either slip can produce lies below it: the plausible maximum in thousands, and 100%.
    assert load_concepts()["mhla_dr"].plausible[1] / 1000 < floor.below
    assert load_concepts()["mhla_dr_percent"].plausible[1] < floor.below
    assert load_concepts()["mhla_dr_percent"].unit_slip_floor is None


def test_lenient_drops_a_unit_slip_and_keeps_the_rest() -> None:
    result = observations_from_records(
        [row("mhla_dr", "3.2", "AB/C"), row("mhla_dr", "3200", "AB/C")], lenient=True
    )
    assert result.observations["value"].to_list() == [3200.0]
    assert [(e.row, e.field) for e in result.rejected] == [(1, "value")]


# ---------------------------------------------------------------- times


@pytest.mark.parametrize(
    "text", ["06/01/2025 08:00", "01/06/2025", "06/13/2025", "6.1.2025", "Jan 6 2025", "2025/01/06"]
)
def test_non_iso_dates_are_never_guessed(text: str) -> None:
    assert parse_times(pl.Series([text])).to_list() == [None]
    with pytest.raises(InputError) as info:
        observations_from_records(
            [row("ferritin", "900", "ng/mL"), row("ferritin", "900", "ng/mL", time=text)]
        )
    assert (info.value.row, info.value.field, info.value.value) == (2, "time", text)
    assert info.value.expected is not None and "--date-format" in info.value.expected


def test_an_ambiguous_date_names_both_readings() -> None:
    with pytest.raises(InputError) as info:
        observations_from_records([row("ferritin", "900", "ng/mL", time="06/01/2025 08:00")])
    assert "6 January or 1 June" in info.value.message


def test_a_non_iso_first_row_does_not_set_the_format_for_the_rest() -> None:
    parsed = parse_times(pl.Series(["06/01/2025", "2025-01-07T08:00:00Z"])).to_list()
    assert parsed == [None, datetime(2025, 1, 7, 8, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("date_format", "text", "expected"),
    [
        ("%d/%m/%Y %H:%M", "06/01/2025 08:00", datetime(2025, 1, 6, 8, tzinfo=UTC)),
        ("%m/%d/%Y %H:%M", "06/01/2025 08:00", datetime(2025, 6, 1, 8, tzinfo=UTC)),
        ("%d/%m/%Y %H:%M", "2025-01-06T08:00:00Z", None),
        ("%d/%m/%Y %H:%M", "06/01/2025", None),
        ("%d/%m/%Y %H:%M", "12.5", None),
        ("%Y-%m-%d %H:%M%z", "2025-01-06 10:00+0200", datetime(2025, 1, 6, 8, tzinfo=UTC)),
    ],
)
def test_date_format_must_match_exactly(date_format: str, text: str, expected: datetime | None) -> None:
    assert parse_times(pl.Series([text]), date_format).to_list() == [expected]


def test_date_format_refuses_hours_since_admission(tmp_path: Path) -> None:
    path = tmp_path / "obs.csv"
    path.write_text(
        "patient_id,time,concept,value,unit\np1,06/01/2025 08:00,ferritin,900,ng/mL\np1,12,gcs,15,\n"
    )
    with pytest.raises(InputError) as info:
        read_observations(path, date_format="%d/%m/%Y %H:%M")
    assert (info.value.row, info.value.field, info.value.value) == (2, "time", "12")
    assert "'%d/%m/%Y %H:%M'" in info.value.message


# ---------------------------------------------------------------- delimiters


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("patient_id,time,concept,value,unit", ","),
        ("patient_id;time;concept;value;unit", ";"),
        ("patient_id\ttime\tconcept\tvalue\tunit", "\t"),
        ("patient_id|time|concept|value|unit", "|"),
        ('patient_id;time;concept;value;"unit, as given"', ";"),
        ("patient_id;time;concept;value;unit|x", ";"),
    ],
)
def test_delimiter_detection(header: str, delimiter: str) -> None:
    required = ["patient_id", "time", "concept", "value"]
    assert detect_delimiter(header, required, "f.csv") == delimiter


def test_an_undecidable_header_is_an_error_naming_what_was_found() -> None:
    with pytest.raises(InputError) as info:
        detect_delimiter("patient_id;time,concept;value,unit", ["patient_id", "unit"], "f.csv")
    assert info.value.field == "header" and info.value.expected is not None
    assert "2 x ','" in info.value.expected and "2 x ';'" in info.value.expected


def test_semicolon_file_is_read_and_noted(tmp_path: Path) -> None:
    path = tmp_path / "obs.csv"
    path.write_text("patient_id;time;concept;value;unit\np1;2025-03-01T08:00:00Z;ferritin;900;ng/mL\n")
    result = read_observations(path)
    assert result.observations["value"].to_list() == [900.0]
    assert result.notes == [f"{path}: read with the delimiter ';' (detected from the header)"]


def test_decimal_comma_is_an_error() -> None:
    with pytest.raises(InputError) as info:
        observations_from_records([row("ferritin", "900,5", "ng/mL")])
    assert (info.value.row, info.value.field, info.value.value) == (1, "value", "900,5")
    assert "comma" in info.value.message


# ---------------------------------------------------------------- site codes


def test_the_example_site_code_file_loads() -> None:
    codes = load_site_codes(EXAMPLE)
    hla = codes.for_coding("http://lab.example-hospital.org/codes", "HLADR-Q")
    assert hla is not None and (hla.concept, hla.unit) == ("mhla_dr", "AB/C")
    assert codes.for_coding("http://other.org", "HLADR-Q") is None
    assert codes.for_coding("", "FERR") is not None


def test_site_codes_map_a_concept_column_and_fill_an_empty_unit() -> None:
    codes = load_site_codes(EXAMPLE)
    result = observations_from_records([row("KREA", "221"), row("FERR", "9", "mg/L")], site_codes=codes)
    got = dict(zip(result.observations["concept"], result.observations["value"], strict=True))
    assert got == {"creatinine": pytest.approx(2.5, abs=0.001), "ferritin": 9000.0}


@pytest.mark.parametrize(
    ("codes", "field", "value", "expected_text"),
    [
        ({"X1": {"concept": "ferritn"}}, "codes.X1", "ferritn", "nearest: ferritin"),
        ({"X1": {"concept": "ferritin", "unit": "mmHg"}}, "codes.X1", "mmHg", "ng/mL"),
        ({"HLA-DR": {"concept": "ferritin"}}, "codes.HLA-DR", "ferritin", "mhla_dr"),
        ({"http://loinc.org|2276-4": {"concept": "crp"}}, "codes.http://loinc.org|2276-4", "crp", "ferritin"),
        ({"X1": {"concept": "crp", "colour": "red"}}, "codes.X1.colour", "red", "codes:"),
    ],
)
def test_bad_site_code_entries_name_the_file_and_key(
    codes: dict[str, Any], field: str, value: str, expected_text: str
) -> None:
    with pytest.raises(InputError) as info:
        parse_site_codes({"codes": codes}, "site.yaml")
    error = info.value
    assert (error.file, error.field, error.value) == ("site.yaml", field, value)
    assert error.expected is not None and expected_text in error.expected


def test_site_code_file_that_is_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("codes: {X1: [\n")
    with pytest.raises(InputError) as info:
        load_site_codes(path)
    assert info.value.file == str(path) and "YAML" in info.value.message
