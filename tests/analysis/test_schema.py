"""The trial export schema: round trips in CSV and Parquet, and errors that name table, row, field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from immunostrat.analysis.schema import (
    TABLES,
    TrialExport,
    polars_schema,
    schema_markdown,
    validate_export,
)
from immunostrat.errors import InputError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_csv(folder: Path, table: str, row: int, field: str, value: str) -> None:
    """Set one cell (1-based data row) of a CSV table, keeping everything as text."""
    path = folder / f"{table}.csv"
    frame = pl.read_csv(path, infer_schema=False)
    col = frame[field].to_list()
    col[row - 1] = value
    frame.with_columns(pl.Series(field, col, dtype=pl.Utf8)).write_csv(path)


def test_csv_round_trip_types(sepsis_dir: Path, sepsis_export: TrialExport) -> None:
    exp = validate_export(sepsis_dir)
    assert exp.participants.height == sepsis_export.participants.height
    for name, dtype in polars_schema("participants").items():
        assert exp.participants.schema[name] == dtype, name
    assert exp.daily_assessments.schema["sofa_total"] == pl.Int64
    assert exp.outcomes.schema["death_day"] == pl.Int64
    assert exp.screening is not None and exp.screening.schema["eligible"] == pl.Boolean
    assert exp.manifest.control_arm == "placebo"
    assert exp.arms == ["immunotherapy", "placebo"]


def test_parquet_equals_csv(tmp_path: Path, sepsis_export: TrialExport, sepsis_dir: Path) -> None:
    pq = sepsis_export.write(tmp_path / "pq", fmt="parquet")
    a, b = validate_export(pq), validate_export(sepsis_dir)
    assert a.participants.equals(b.participants)
    assert a.daily_assessments.equals(b.daily_assessments)
    assert a.outcomes.equals(b.outcomes)


def test_in_memory_frames(sepsis_export: TrialExport) -> None:
    exp = validate_export(sepsis_export)
    assert exp.outcomes.height == sepsis_export.outcomes.height
    exp2 = validate_export({k: v for k, v in sepsis_export.as_mapping().items() if k != "screening"})
    assert exp2.screening is None


@pytest.mark.parametrize(
    ("table", "row", "field", "value", "fragment"),
    [
        ("participants", 3, "age", "seventy", "not a number"),
        ("participants", 5, "age", "12", "below the allowed range"),
        ("participants", 2, "sex", "X", "value not allowed"),
        ("participants", 4, "itt", "maybe", "not a boolean"),
        ("participants", 6, "randomized_at", "yesterday", "ISO 8601"),
        ("daily_assessments", 7, "sofa_total", "25", "above the allowed range"),
        ("daily_assessments", 8, "day", "2.5", "not a whole number"),
        ("outcomes", 9, "infection_status_day15", "cured", "value not allowed"),
        ("participants", 10, "site", "", "empty value"),
    ],
)
def test_errors_name_table_row_field(
    tmp_path: Path, sepsis_dir: Path, table: str, row: int, field: str, value: str, fragment: str
) -> None:
    folder = _copy(sepsis_dir, tmp_path / "exp")
    _edit_csv(folder, table, row, field, value)
    with pytest.raises(InputError) as info:
        validate_export(folder)
    err = info.value
    assert err.file is not None and err.file.endswith(f"{table}.csv")
    assert err.row == row
    assert err.field == field
    assert fragment in err.message
    assert table in str(err) and f"row {row}" in str(err)


def test_missing_required_column_and_table(tmp_path: Path, sepsis_dir: Path) -> None:
    folder = _copy(sepsis_dir, tmp_path / "exp")
    frame = pl.read_csv(folder / "participants.csv", infer_schema=False).drop("arm")
    frame.write_csv(folder / "participants.csv")
    with pytest.raises(InputError, match="required column missing") as info:
        validate_export(folder)
    assert info.value.field == "arm"
    shutil.copy(sepsis_dir / "participants.csv", folder / "participants.csv")
    (folder / "outcomes.csv").unlink()
    with pytest.raises(InputError, match="required table outcomes missing"):
        validate_export(folder)


def test_duplicate_id_and_referential_integrity(tmp_path: Path, sepsis_dir: Path) -> None:
    folder = _copy(sepsis_dir, tmp_path / "dup")
    first = pl.read_csv(folder / "participants.csv", infer_schema=False)["participant_id"][0]
    _edit_csv(folder, "participants", 2, "participant_id", first)
    with pytest.raises(InputError, match="duplicate value") as info:
        validate_export(folder)
    assert info.value.row == 2 and info.value.field == "participant_id"

    folder2 = _copy(sepsis_dir, tmp_path / "ref")
    _edit_csv(folder2, "daily_assessments", 4, "participant_id", "NOBODY")
    with pytest.raises(InputError, match="unknown participant_id") as info2:
        validate_export(folder2)
    assert info2.value.row == 4 and info2.value.value == "NOBODY"


def test_screening_rules(tmp_path: Path, sepsis_dir: Path) -> None:
    folder = _copy(sepsis_dir, tmp_path / "scr")
    scr = pl.read_csv(folder / "screening.csv", infer_schema=False)
    row = int(scr["eligible"].eq("false").arg_true()[0]) + 1
    _edit_csv(folder, "screening", row, "exclusion_reason", "")
    with pytest.raises(InputError, match="ineligible without exclusion_reason") as info:
        validate_export(folder)
    assert info.value.row == row


def test_death_rules(tmp_path: Path, sepsis_dir: Path) -> None:
    folder = _copy(sepsis_dir, tmp_path / "death")
    out = pl.read_csv(folder / "outcomes.csv", infer_schema=False)
    row = int(out["death_day"].is_not_null().arg_true()[0]) + 1
    death = int(out["death_day"][row - 1])
    _edit_csv(folder, "outcomes", row, "last_contact_day", str(max(1, death - 1)))
    with pytest.raises(InputError, match="last_contact_day before death_day"):
        validate_export(folder)


def test_manifest_checks(tmp_path: Path, sepsis_dir: Path) -> None:
    folder = _copy(sepsis_dir, tmp_path / "man")
    (folder / "manifest.json").write_text(json.dumps({"schema_version": "2.0"}))
    with pytest.raises(InputError, match="unsupported schema_version"):
        validate_export(folder)
    (folder / "manifest.json").write_text(json.dumps({"arms": ["a", "b"], "control_arm": "b"}))
    with pytest.raises(InputError, match="arm not listed in manifest") as info:
        validate_export(folder)
    assert info.value.row == 1


def test_schema_doc_lists_every_column() -> None:
    md = schema_markdown()
    for table in TABLES.values():
        assert f"## {table.name}" in md
        for col in table.columns:
            assert f"| {col.name} |" in md


def test_package_exports() -> None:
    import immunostrat.analysis as ana

    for name in ana.__all__:
        assert callable(getattr(ana, name)) or isinstance(getattr(ana, name), str), name


def test_layering_imports_nothing_higher() -> None:
    """analysis may import concepts, scores, protocols, errors; never cli/api/web/trial/cohort/simulation."""
    import ast
    from pathlib import Path

    import immunostrat.analysis as ana

    forbidden = ("cli", "api", "web", "trial", "cohort", "simulation", "sources")
    root = Path(ana.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "immunostrat" and len(parts) > 1:
                    assert parts[1] not in forbidden, (path.name, name)


def test_docs_schema_in_sync() -> None:
    """docs/analysis.md carries the schema tables the trial service writes to."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"
    assert schema_markdown(2) in doc.read_text()
