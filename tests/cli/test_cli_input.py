"""Input that cannot be misread, through the real command line: each bad input stops with one line
naming row, field and value (exit code 2) and writes nothing; the good side of each rule is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from immunostrat.cli import app

runner = CliRunner()
HEADER = "patient_id,time,concept,value,unit\n"
SITE_CODES = Path(__file__).parents[2] / "src/immunostrat/concepts/site-codes.example.yaml"


def run(
    tmp_path: Path, command: str, text: str, *options: str, name: str = "obs.csv"
) -> tuple[int, str, Path]:
    """Run ``command`` on ``text`` written to ``name``; returns (exit code, stderr, output path)."""
    source = tmp_path / name
    source.write_text(text, encoding="utf-8")
    output = tmp_path / "out" / "result.csv"
    extra = ["--protocol", "immunosep-2025"] if command == "classify" else []
    result = runner.invoke(app, [command, "--input", str(source), "--output", str(output), *extra, *options])
    return result.exit_code, result.stderr, output


def assert_refused(code: int, stderr: str, output: Path, *parts: str) -> str:
    """Exit code 2, exactly one error line naming every part, no output file (nor its folder)."""
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # nothing else printed, no wrapping
    for part in parts:
        assert part in errors[0], (part, errors[0])
    assert not output.exists() and not output.parent.exists()
    return errors[0]


# ---------------------------------------------------------------- times


@pytest.mark.parametrize("command", ["classify", "score"])
def test_day_month_date_is_refused_as_ambiguous(tmp_path: Path, command: str) -> None:
    text = HEADER + "p1,2025-01-06T08:00:00Z,ferritin,900,ng/mL\np1,06/01/2025 08:00,ferritin,950,ng/mL\n"
    line = assert_refused(
        *run(tmp_path, command, text),
        "row 2",
        "field 'time'",
        "'06/01/2025 08:00'",
        "ISO 8601",
        "--date-format",
    )
    assert "6 January or 1 June" in line


@pytest.mark.parametrize("value", ["01/06/2025", "06/13/2025", "1.6.2025 08:00"])
def test_any_non_iso_date_is_refused(tmp_path: Path, value: str) -> None:
    text = HEADER + f"p1,{value},ferritin,900,ng/mL\n"
    assert_refused(*run(tmp_path, "classify", text), "row 1", "field 'time'", repr(value), "ISO 8601")


def test_iso_times_are_read(tmp_path: Path) -> None:
    text = (
        HEADER + "p1,2025-01-06T08:00:00+01:00,ferritin,9000,ng/mL\np1,2025-01-06 09:00,mhla_dr,3000,AB/C\n"
    )
    code, stderr, output = run(tmp_path, "classify", text)
    assert code == 0, stderr
    assert pl.read_csv(output)["time"].to_list() == ["2025-01-06T09:00:00Z"]


@pytest.mark.parametrize(
    ("date_format", "text_time", "expected"),
    [
        ("%d/%m/%Y %H:%M", "06/01/2025 08:00", "2025-01-06T08:00:00Z"),
        ("%m/%d/%Y %H:%M", "06/01/2025 08:00", "2025-06-01T08:00:00Z"),
        ("%m/%d/%Y %H:%M", "06/13/2025 08:00", "2025-06-13T08:00:00Z"),
        ("%d.%m.%Y %H:%M %z", "06.01.2025 09:00 +0100", "2025-01-06T08:00:00Z"),
    ],
)
def test_date_format_reads_every_row_its_way(
    tmp_path: Path, date_format: str, text_time: str, expected: str
) -> None:
    text = HEADER + f"p1,{text_time},ferritin,9000,ng/mL\n"
    code, stderr, output = run(tmp_path, "classify", text, "--date-format", date_format)
    assert code == 0, stderr
    row = pl.read_csv(output).row(0, named=True)
    assert (row["time"], row["endotype"]) == (expected, "mals")


def test_date_format_refuses_the_first_row_that_does_not_match(tmp_path: Path) -> None:
    text = HEADER + (
        "p1,06/01/2025 08:00,ferritin,900,ng/mL\n"
        "p1,2025-01-07T08:00:00Z,ferritin,900,ng/mL\n"  # ISO, but the file named another format
        "p1,13/01/2025 08:00,ferritin,900,ng/mL\n"
    )
    assert_refused(
        *run(tmp_path, "classify", text, "--date-format", "%m/%d/%Y %H:%M"),
        "row 2",
        "field 'time'",
        "'2025-01-07T08:00:00Z'",
        "'%m/%d/%Y %H:%M'",
    )


def test_date_format_also_reads_the_patient_tables_admission_time(tmp_path: Path) -> None:
    patients = tmp_path / "patients.csv"
    patients.write_text("patient_id,admission_time\np1,05/01/2025 08:00\n")
    text = HEADER + "p1,06/01/2025 08:00,ferritin,9000,ng/mL\n"
    code, stderr, output = run(
        tmp_path, "classify", text, "--date-format", "%d/%m/%Y %H:%M", "--patients", str(patients)
    )
    assert code == 0, stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["mals"]
    patients.write_text("patient_id,admission_time\np1,2025-01-05 08:00\n")
    code, stderr, _ = run(
        tmp_path, "classify", text, "--date-format", "%d/%m/%Y %H:%M", "--patients", str(patients)
    )
    assert code == 2 and "admission_time" in stderr and "row 1" in stderr


def test_decision_time_is_said(tmp_path: Path) -> None:
    text = HEADER + "p1,2025-03-01T08:00:00Z,ferritin,9000,ng/mL\n"
    code, stderr, _ = run(tmp_path, "classify", text)
    assert code == 0 and "decision time: each patient's last observation" in stderr
    code, stderr, output = run(tmp_path, "classify", text, "--at", "2025-03-01T10:00:00Z")
    assert code == 0 and "decision time: 2025-03-01T10:00:00+00:00 (--at)" in stderr
    assert pl.read_csv(output)["time"].to_list() == ["2025-03-01T10:00:00Z"]
    code, stderr, output = run(tmp_path, "classify", text, "--at", "now")
    assert code == 0 and "(--at now)" in stderr
    # Measured long before now: stale, so the endotype is unknown (the decision time was really now).
    assert pl.read_csv(output)["endotype"].to_list() == ["unknown"]
    code, stderr, _ = run(tmp_path, "score", text, "--at", "now")
    assert code == 0 and "score window: 24 h up to" in stderr and "(--at now)" in stderr


# ---------------------------------------------------------------- concepts


@pytest.mark.parametrize("name", ["Ferritin", "FERRITIN", "2276-4", "20567-4", "serum ferritin"])
def test_concept_by_id_any_case_loinc_or_alias(tmp_path: Path, name: str) -> None:
    text = HEADER + f"p1,2025-03-01T08:00:00Z,{name},9000,ng/mL\n"
    code, stderr, output = run(tmp_path, "classify", text)
    assert code == 0, stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["mals"]


@pytest.mark.parametrize("name", ["HLA-DR", "mHLA-DR", "monocyte HLA-DR", "MHLA_DR"])
def test_hla_dr_aliases(tmp_path: Path, name: str) -> None:
    text = HEADER + f"p1,2025-03-01T08:00:00Z,ferritin,900,ng/mL\np1,2025-03-01T08:00:00Z,{name},3000,AB/C\n"
    code, stderr, output = run(tmp_path, "classify", text)
    assert code == 0, stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["immunoparalysis"]


@pytest.mark.parametrize(
    ("name", "nearest"), [("Feritin", "ferritin"), ("HLA DR AB", "mhla_dr"), ("creatinin", "creatinine")]
)
def test_unknown_concept_suggests_the_nearest_ids(tmp_path: Path, name: str, nearest: str) -> None:
    text = HEADER + f"p1,2025-03-01T08:00:00Z,{name},900,ng/mL\n"
    line = assert_refused(
        *run(tmp_path, "classify", text), "row 1", "field 'concept'", repr(name), "nearest:"
    )
    assert nearest in line.split("nearest:")[1]


def test_concepts_listing_shows_aliases_and_the_floor() -> None:
    exe = Path(sys.executable).with_name("immunostrat")
    env = {**os.environ, "COLUMNS": "400"}
    result = subprocess.run([str(exe), "concepts"], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    mhla = next(line for line in result.stdout.splitlines() if "│ mhla_dr " in line)
    assert "monocyte HLA-DR" in mhla and "below 200: unit slip" in mhla


# ---------------------------------------------------------------- delimiters


@pytest.mark.parametrize(("delimiter", "said"), [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_other_delimiters_are_detected_and_said(tmp_path: Path, delimiter: str, said: str) -> None:
    rows = [HEADER.strip().split(","), ["p1", "2025-03-01T08:00:00Z", "ferritin", "9000", "ng/mL"]]
    text = "".join(delimiter.join(r) + "\n" for r in rows)
    code, stderr, output = run(tmp_path, "classify", text)
    assert code == 0, stderr
    assert f"delimiter {said}" in stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["mals"]


def test_a_header_with_two_delimiters_is_refused_naming_them(tmp_path: Path) -> None:
    text = "patient_id;time,concept;value,unit\np1;2025-03-01T08:00:00Z,ferritin;900,ng/mL\n"
    assert_refused(*run(tmp_path, "classify", text), "field 'header'", "2 x ','", "2 x ';'")


def test_semicolon_file_missing_a_column_names_the_delimiter(tmp_path: Path) -> None:
    text = "patient_id;time;concept;value\np1;2025-03-01T08:00:00Z;ferritin;900\n"
    assert_refused(*run(tmp_path, "classify", text), "field 'unit'", "missing column", "delimiter ';'")


def test_decimal_comma_is_refused_not_misread(tmp_path: Path) -> None:
    text = (
        "patient_id;time;concept;value;unit\n"
        "p1;2025-03-01T08:00:00Z;ferritin;900;ng/mL\n"
        "p1;2025-03-01T08:00:00Z;mhla_dr;3,2;AB/C\n"
    )
    assert_refused(*run(tmp_path, "classify", text), "row 2", "field 'value'", "'3,2'", "decimal point")


# ---------------------------------------------------------------- unit-slip floor


@pytest.mark.parametrize("value", ["3.2", "85", "199"])
def test_mhla_dr_below_the_floor_is_a_unit_slip(tmp_path: Path, value: str) -> None:
    text = (
        HEADER + f"p1,2025-03-01T08:00:00Z,ferritin,900,ng/mL\np1,2025-03-01T08:00:00Z,mhla_dr,{value},AB/C\n"
    )
    line = assert_refused(
        *run(tmp_path, "classify", text), "row 2", "field 'value'", repr(value), "below 200 AB/C", "AB/C"
    )
    assert f"{float(value) * 1000:,.0f} AB/C" in line and "percentage" in line and "mhla_dr_percent" in line


def test_mhla_dr_at_the_floor_is_read(tmp_path: Path) -> None:
    text = HEADER + "p1,2025-03-01T08:00:00Z,ferritin,900,ng/mL\np1,2025-03-01T08:00:00Z,mhla_dr,200,AB/C\n"
    code, stderr, output = run(tmp_path, "classify", text)
    assert code == 0, stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["immunoparalysis"]


def test_lenient_drops_a_unit_slip_and_reports_it(tmp_path: Path) -> None:
    text = HEADER + "p1,2025-03-01T08:00:00Z,ferritin,900,ng/mL\np1,2025-03-01T08:00:00Z,mhla_dr,3.2,AB/C\n"
    code, stderr, output = run(tmp_path, "classify", text, "--lenient")
    assert code == 0, stderr
    assert "dropped:" in stderr and "row 2" in stderr and "3,200 AB/C" in stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["unknown"]  # mHLA-DR missing, not 3.2


# ---------------------------------------------------------------- site codes


def test_site_codes_in_the_concept_column_with_their_unit(tmp_path: Path) -> None:
    text = HEADER + "p1,2025-03-01T08:00:00Z,FERR,900,\np1,2025-03-01T08:00:00Z,HLADR-Q,3000,\n"
    code, stderr, _ = run(tmp_path, "classify", text)
    assert code == 2 and "'FERR'" in stderr  # without the site's file the code is unknown
    code, stderr, output = run(tmp_path, "classify", text, "--site-codes", str(SITE_CODES))
    assert code == 0, stderr
    assert pl.read_csv(output)["endotype"].to_list() == ["immunoparalysis"]


def test_site_code_file_naming_an_unknown_concept_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text('codes:\n  "http://lab.example.org|X1": {concept: ferritn}\n')
    text = HEADER + "p1,2025-03-01T08:00:00Z,ferritin,900,ng/mL\n"
    assert_refused(
        *run(tmp_path, "classify", text, "--site-codes", str(site)),
        f"file {site}",
        "codes.http://lab.example.org|X1",
        "'ferritn'",
        "nearest: ferritin",
    )


# ---------------------------------------------------------------- FHIR files


def observation(oid: str, subject: str, system: str, code: str, value: float, unit: str | None) -> dict:
    quantity: dict[str, object] = {"value": value}
    if unit is not None:
        quantity["unit"] = unit
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": "2025-03-01T08:00:00Z",
        "valueQuantity": quantity,
    }


LOINC = "http://loinc.org"
SITE = "http://lab.example-hospital.org/codes"


def fhir_resources(weight: tuple[float, str] | None = (132.3, "[lb_av]")) -> list[dict]:
    """A woman of 70 at the observation with MALS and creatinine 2.5 mg/dL, and an immunoparalysed man."""
    found = [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1955-02-01"},
        observation("f1", "Patient/p1", LOINC, "2276-4", 9000, "ng/mL"),
        observation("c1", "Patient/p1", SITE, "KREA", 221, None),
        {"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1970-01-01"},
        observation("h2", "Patient/p2", SITE, "HLADR-Q", 3000, None),
        observation("f2", "Patient/p2", LOINC, "2276-4", 900, "ng/mL"),
    ]
    if weight is not None:
        found.append(observation("w1", "Patient/p1", LOINC, "29463-7", weight[0], weight[1]))
    return found


def bundle(items: list[dict]) -> str:
    return json.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in items]}
    )


@pytest.mark.parametrize("kind", ["json", "ndjson"])
def test_fhir_file_weight_gives_a_creatinine_clearance(tmp_path: Path, kind: str) -> None:
    items = fhir_resources()
    text = bundle(items) if kind == "json" else "".join(json.dumps(r) + "\n" for r in items)
    (tmp_path / f"data.{kind}").write_text(text)
    source = tmp_path / f"data.{kind}"
    out = tmp_path / "result.json"
    result = runner.invoke(
        app, ["classify", "-i", str(source), "-o", str(out), "--site-codes", str(SITE_CODES)]
    )
    assert result.exit_code == 0, result.stderr
    by_id = {r["patient_id"]: r for r in json.loads(out.read_text())}
    assert by_id["p1"]["endotype"] == "mals" and by_id["p2"]["endotype"] == "immunoparalysis"
    # 132.3 lb = 60.0 kg; age 70, female, creatinine 221 umol/L = 2.5 mg/dL: CrCl 70*60/(72*2.5)*0.85
    assert by_id["p1"]["dose"]["creatinine_clearance_ml_min"] == pytest.approx(19.8, abs=0.05)


def test_fhir_file_without_weight_has_no_clearance(tmp_path: Path) -> None:
    source = tmp_path / "data.json"
    source.write_text(bundle(fhir_resources(weight=None)))
    out = tmp_path / "result.json"
    result = runner.invoke(
        app, ["classify", "-i", str(source), "-o", str(out), "--site-codes", str(SITE_CODES)]
    )
    assert result.exit_code == 0, result.stderr
    by_id = {r["patient_id"]: r for r in json.loads(out.read_text())}
    assert by_id["p1"]["dose"]["creatinine_clearance_ml_min"] is None
    assert "weight" in " ".join(by_id["p1"]["dose"]["renal_missing"])


def test_fhir_weight_in_an_unknown_unit_is_refused(tmp_path: Path) -> None:
    text = bundle(fhir_resources(weight=(60, "stone")))
    assert_refused(
        *run(tmp_path, "classify", text, "--site-codes", str(SITE_CODES), name="data.json"),
        "row 7",
        "field 'Observation/w1.valueQuantity.unit'",
        "'stone'",
        "kg",
    )


def test_fhir_score_reads_ndjson(tmp_path: Path) -> None:
    text = "".join(json.dumps(r) + "\n" for r in fhir_resources())
    code, stderr, output = run(tmp_path, "score", text, "--site-codes", str(SITE_CODES), name="data.ndjson")
    assert code == 0, stderr
    frame = pl.read_csv(output)
    # Creatinine 2.5 mg/dL scores renal 2 (Vincent 1996: 2.0-3.4).
    assert dict(zip(frame["patient_id"], frame["sofa_renal"], strict=True)) == {"p1": 2, "p2": 0}


def test_json_that_is_not_fhir_is_refused(tmp_path: Path) -> None:
    assert_refused(
        *run(tmp_path, "classify", '{"patients": []}', name="data.json"),
        "not FHIR",
        "resourceType",
        "'patients'",
    )


def test_bad_ndjson_line_is_refused_naming_the_line(tmp_path: Path) -> None:
    text = json.dumps(fhir_resources()[0]) + "\n{not json\n"
    assert_refused(
        *run(tmp_path, "classify", text, name="data.ndjson"), "row 2", "field 'line'", "'{not json'"
    )


def test_fhir_value_error_names_the_line(tmp_path: Path) -> None:
    items = fhir_resources()
    items[1] = observation("f1", "Patient/p1", LOINC, "2276-4", 9000, "ng/dm")
    text = "".join(json.dumps(r) + "\n" for r in items)
    assert_refused(
        *run(tmp_path, "classify", text, "--site-codes", str(SITE_CODES), name="data.ndjson"),
        "row 2",
        "field 'unit'",
        "'ng/dm'",
    )
