"""The statistician's and regulator's exports: CDISC ODM 1.3.2 read back with odmlib's loader and with
ElementTree, SAS XPT / Stata / SPSS files read back with pyreadstat, and the data dictionary."""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyreadstat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from immunostrat.errors import InputError
from immunostrat.trial.export_formats import (
    SPSS_RESERVED,
    STATA_RESERVED,
    FormInfo,
    ItemInfo,
    ItemValue,
    StudyInfo,
    SubjectRecord,
    VisitInfo,
    load_odm,
    names_in_file,
    write_data_dictionary,
    write_odm,
    write_statistical,
)

NS = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}
AS_OF = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

INFECTION = ItemInfo(
    "infection_status", "Infection status", "text", choices=("resolved", "improving", "persistent")
)
PLATELETS = ItemInfo(
    "platelets", "Platelets", "float", unit="10^9/L", concept="platelets", loinc="777-3", range=(0.0, 2000.0)
)
SOFA = ItemInfo(
    "sofa_total",
    "SOFA total",
    "integer",
    range=(0, 24),
    derived_from="sofa-1996 score from the form's fields",
)
SHOCK = ItemInfo("septic_shock", "Septic shock", "boolean", required=True)
DAILY = FormInfo("daily", "Daily assessment", (PLATELETS, SOFA, INFECTION))
BASELINE = FormInfo("baseline", "Baseline", (SHOCK,))
STUDY = StudyInfo(
    oid="IMMUNOSEP",
    name="ImmunoSep",
    description="Personalised immunotherapy in sepsis",
    protocol_name="immunosep-2025",
    version="1.0",
    visits=(
        VisitInfo("day1", "Day 1", 1, ("baseline", "daily")),
        VisitInfo("day7", "Day 7", 7, ("daily",)),
    ),
    forms=(DAILY, BASELINE),
)
T1 = datetime(2025, 2, 1, 9, 30, tzinfo=UTC)
T2 = datetime(2025, 2, 8, 10, 0, tzinfo=UTC)


def _subjects() -> list[SubjectRecord]:
    return [
        SubjectRecord(
            "P001",
            "ATH",
            "anakinra",
            (
                ItemValue("baseline", "day1", "septic_shock", True, user="inv1", at=T1),
                ItemValue("daily", "day1", "platelets", 85.5, user="inv1", at=T1),
                ItemValue("daily", "day1", "sofa_total", 9),
                ItemValue("daily", "day1", "infection_status", "persistent"),
                ItemValue(
                    "daily", "day7", "platelets", 142.0, user="inv2", at=T2, reason="transcription error"
                ),
                ItemValue("daily", "day7", "sofa_total", 4),
            ),
            signatures=(("day7", "pi1", T2, "Approval of the visit's data"),),
        ),
        SubjectRecord(
            "P002",
            "THE",
            "placebo",
            (
                ItemValue("baseline", "day1", "septic_shock", False),
                ItemValue("daily", "day1", "platelets", 210.0),
                ItemValue("daily", "day1", "infection_status", "improving"),
            ),
        ),
        SubjectRecord(  # screened, never randomized; a value cleared with its reason
            "P003",
            "ATH",
            None,
            (ItemValue("daily", "day7", "sofa_total", None, user="dm1", at=T2, reason="wrong patient"),),
        ),
    ]


def test_odm_round_trip_with_odmlib_and_elementtree(tmp_path: Path) -> None:
    path = write_odm(STUDY, _subjects(), tmp_path / "study.xml", as_of=AS_OF)
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == ["study.xml"]

    odm = load_odm(path)  # odmlib's own loader
    assert odm.FileType == "Snapshot" and odm.ODMVersion == "1.3.2"
    mdv = odm.Study[0].MetaDataVersion[0]
    assert [e.OID for e in mdv.StudyEventDef] == ["SE.RANDOMIZATION", "SE.day1", "SE.day7"]
    assert {f.OID for f in mdv.FormDef} == {"F.RANDOMIZATION", "F.daily", "F.baseline"}
    platelets = mdv.find("ItemDef", "OID", "IT.daily.platelets")
    assert platelets.DataType == "float"
    assert platelets.MeasurementUnitRef[0].MeasurementUnitOID == "MU.10^9/L"
    assert {(a.Context, a.Name) for a in platelets.Alias} == {
        ("LOINC", "777-3"),
        ("immunostrat concept", "platelets"),
    }
    assert [(r.Comparator, r.CheckValue[0]._content) for r in platelets.RangeCheck] == [
        ("GE", "0"),
        ("LE", "2000"),
    ]
    code_list = mdv.find("CodeList", "OID", "CL.daily.infection_status")
    assert [c.CodedValue for c in code_list.CodeListItem] == ["resolved", "improving", "persistent"]
    sofa_ref = next(
        r for r in mdv.find("ItemGroupDef", "OID", "IG.daily").ItemRef if r.ItemOID == "IT.daily.sofa_total"
    )
    method = mdv.find("MethodDef", "OID", sofa_ref.MethodOID)
    assert method.Description.TranslatedText[0]._content == "sofa-1996 score from the form's fields"
    p1 = odm.ClinicalData[0].SubjectData[0]
    assert p1.SubjectKey == "P001" and p1.SiteRef.LocationOID == "LOC.ATH"
    day7 = next(e for e in p1.StudyEventData if e.StudyEventOID == "SE.day7")
    item = day7.FormData[0].ItemGroupData[0].ItemData[0]
    assert (item.ItemOID, item.Value) == ("IT.daily.platelets", "142.0")
    assert item.AuditRecord.UserRef.UserOID == "USR.inv2"
    assert item.AuditRecord.ReasonForChange._content == "transcription error"
    assert day7.Signature.UserRef.UserOID == "USR.pi1"

    # The same file as plain XML, as any other reader sees it.
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.cdisc.org/ns/odm/v1.3}ODM"
    assert root.get("AsOfDateTime") == "2025-03-01T12:00:00Z"
    units = root.findall(".//odm:BasicDefinitions/odm:MeasurementUnit", NS)
    assert [u.get("Name") for u in units] == ["10^9/L"]
    values = {
        (s.get("SubjectKey"), e.get("StudyEventOID"), i.get("ItemOID")): i.get("Value")
        for s in root.findall(".//odm:SubjectData", NS)
        for e in s.findall("odm:StudyEventData", NS)
        for i in e.findall(".//odm:ItemData", NS)
    }
    assert values == {
        ("P001", "SE.RANDOMIZATION", "IT.RANDOMIZATION.ARM"): "anakinra",
        ("P001", "SE.day1", "IT.baseline.septic_shock"): "true",
        ("P001", "SE.day1", "IT.daily.platelets"): "85.5",
        ("P001", "SE.day1", "IT.daily.sofa_total"): "9",
        ("P001", "SE.day1", "IT.daily.infection_status"): "persistent",
        ("P001", "SE.day7", "IT.daily.platelets"): "142.0",
        ("P001", "SE.day7", "IT.daily.sofa_total"): "4",
        ("P002", "SE.RANDOMIZATION", "IT.RANDOMIZATION.ARM"): "placebo",
        ("P002", "SE.day1", "IT.baseline.septic_shock"): "false",
        ("P002", "SE.day1", "IT.daily.platelets"): "210.0",
        ("P002", "SE.day1", "IT.daily.infection_status"): "improving",
        ("P003", "SE.day7", "IT.daily.sofa_total"): None,
    }
    cleared = root.find(".//odm:SubjectData[@SubjectKey='P003']//odm:ItemData", NS)
    assert cleared is not None and cleared.get("IsNull") == "Yes" and cleared.get("Value") is None
    assert cleared.find("odm:AuditRecord/odm:ReasonForChange", NS).text == "wrong patient"  # type: ignore[union-attr]
    assert [e.get("StudyEventOID") for e in root.findall(".//odm:SubjectData[@SubjectKey='P003']/*", NS)] == [
        None,
        "SE.day7",
    ]
    audit = root.find(".//odm:ItemData[@ItemOID='IT.daily.platelets']/odm:AuditRecord", NS)
    assert audit is not None
    assert audit.find("odm:DateTimeStamp", NS).text == "2025-02-01T09:30:00Z"  # type: ignore[union-attr]
    assert audit.find("odm:LocationRef", NS).get("LocationOID") == "LOC.ATH"  # type: ignore[union-attr]
    sig_def = root.find(".//odm:AdminData/odm:SignatureDef", NS)
    assert sig_def is not None and sig_def.find("odm:Meaning", NS).text == "Approval of the visit's data"  # type: ignore[union-attr]


def test_odm_refuses_bad_values_and_leaves_nothing(tmp_path: Path) -> None:
    def one(value: ItemValue) -> list[SubjectRecord]:
        return [SubjectRecord("P9", "ATH", None, (value,))]

    cases = [
        (ItemValue("daily", "day1", "platelets", "many"), "float"),
        (ItemValue("daily", "day1", "infection_status", "cured"), "one of"),
        (ItemValue("daily", "day1", "heart_rate", 80), "a field of the form"),
        (ItemValue("baseline", "day7", "septic_shock", True), "one of"),
        (ItemValue("daily", "day1", "platelets", 90.0, user="inv1"), "both user and time"),
        (ItemValue("daily", "day1", "platelets", 90.0, user="inv1", at=datetime(2025, 2, 1)), "aware"),
    ]
    for value, expected in cases:
        with pytest.raises(InputError) as err:
            write_odm(STUDY, one(value), tmp_path / "bad.xml", as_of=AS_OF)
        assert expected in (err.value.expected or "")
        assert "P9/" in (err.value.field or "")
    assert list(tmp_path.iterdir()) == []


BILIRUBIN_LABEL = "Total bilirubin, worst in the 24 h before randomization"


def _tables() -> tuple[dict[str, pl.DataFrame], dict[str, dict[str, ItemInfo]]]:
    participants = pl.DataFrame(
        {
            "participant_id": ["P001", "P002"],
            "randomized_at": [
                datetime(2025, 2, 1, 9, 0, tzinfo=UTC),
                datetime(2025, 2, 2, 18, 45, tzinfo=UTC),
            ],
            "septic_shock": [True, False],
            "ferritin_ng_ml": [5120.5, None],
            "bilirubin_umol_l": [20.5, 35.0],
        }
    )
    daily = pl.DataFrame(
        {
            "participant_id": ["P001", "P001", "P002"],
            "day": [1, 7, 1],
            "platelets": [85.5, 142.0, 210.0],
            "sofa_total": [9, 4, None],
            "infection_status": ["persistent", None, "improving"],
        }
    )
    pid = ItemInfo("participant_id", "Participant pseudonym", "text", required=True)
    dictionary = {
        "participants": {
            "participant_id": pid,
            "randomized_at": ItemInfo("randomized_at", "Time of randomization", "datetime"),
            "septic_shock": SHOCK,
            "ferritin_ng_ml": ItemInfo("ferritin_ng_ml", "Ferritin", "float", unit="ng/mL", loinc="2276-4"),
            "bilirubin_umol_l": ItemInfo("bilirubin_umol_l", BILIRUBIN_LABEL, "float", unit="µmol/L"),
        },
        "daily_assessments": {
            "participant_id": pid,
            "day": ItemInfo("day", "Study day", "integer"),
            "platelets": PLATELETS,
            "sofa_total": SOFA,
            "infection_status": INFECTION,
        },
    }
    return {"participants": participants, "daily_assessments": daily}, dictionary


def test_xpt_short_names_labels_and_values(tmp_path: Path) -> None:
    tables, dictionary = _tables()
    paths = write_statistical(tables, dictionary, tmp_path / "xpt", "xpt", study_label="ImmunoSep")
    assert [p.name for p in paths] == ["participants.xpt", "daily_assessments.xpt", "data_dictionary.csv"]
    df, meta = pyreadstat.read_xport(str(paths[1]), output_format="polars")
    # Names cut to 8 characters, upper case, unique; a clash gets a number.
    assert list(df.columns) == ["PARTICIP", "DAY", "PLATELET", "SOFA_TOT", "INFECTIO"]
    assert meta.table_name == "DAILY_AS"
    assert meta.column_names_to_labels["PLATELET"] == "Platelets (10^9/L)"
    assert df["PLATELET"].to_list() == [85.5, 142.0, 210.0]
    assert df["INFECTIO"].to_list() == ["persistent", "", "improving"]  # XPT keeps the text
    p, pmeta = pyreadstat.read_xport(str(paths[0]), output_format="polars")
    assert p["SEPTIC_S"].to_list() == [1, 0]
    assert p["RANDOMIZ"].to_list()[1] == datetime(2025, 2, 2, 18, 45)
    assert pmeta.file_label == "ImmunoSep: participants"
    # XPT version 5 labels: ASCII, at most 40 characters, the unit kept (the full label is in the dictionary).
    assert pmeta.column_names_to_labels["BILIRUBI"] == "Total bilirubin, worst in the 2 (umol/L)"
    rows = list(csv.DictReader(paths[2].open()))
    assert {(r["table"], r["column"], r["name_in_file"]) for r in rows} >= {
        ("daily_assessments", "infection_status", "INFECTIO"),
        ("participants", "randomized_at", "RANDOMIZ"),
    }
    names = names_in_file({"t": pl.DataFrame(schema=["platelets_a", "platelets_b", "platelet"])}, "xpt")
    # A name that fits is kept; the cut ones are numbered in column order.
    assert names.columns["t"] == {
        "platelets_a": "PLATELE1",
        "platelets_b": "PLATELE2",
        "platelet": "PLATELET",
    }
    stata = names_in_file({"t": pl.DataFrame(schema=["in", "str12", "day", "3rd_dose"])}, "dta")
    assert stata.columns["t"] == {"in": "_in", "str12": "_str12", "day": "day", "3rd_dose": "_3rd_dose"}


@pytest.mark.parametrize("fmt", ["dta", "sav"])
def test_stata_and_spss_value_labels(tmp_path: Path, fmt: str) -> None:
    tables, dictionary = _tables()
    paths = write_statistical(tables, dictionary, tmp_path / fmt, fmt)  # type: ignore[arg-type]
    reader = pyreadstat.read_dta if fmt == "dta" else pyreadstat.read_sav
    daily, meta = reader(str(paths[1]), output_format="polars")
    assert list(daily.columns) == list(tables["daily_assessments"].columns)  # names fit: kept
    assert meta.column_names_to_labels["platelets"] == "Platelets (10^9/L)"
    assert meta.column_names_to_labels["sofa_total"] == "SOFA total"
    assert meta.variable_value_labels["infection_status"] == {1: "resolved", 2: "improving", 3: "persistent"}
    assert daily["infection_status"].to_list()[0] == 3 and daily["infection_status"].to_list()[2] == 2
    assert daily["platelets"].to_list() == [85.5, 142.0, 210.0]
    labelled, _ = reader(str(paths[1]), apply_value_formats=True, output_format="polars")
    assert labelled["infection_status"].to_list()[0] == "persistent"
    participants, pmeta = reader(str(paths[0]), output_format="polars")
    assert participants["septic_shock"].to_list() == [1, 0]
    assert pmeta.variable_value_labels["septic_shock"] == {0: "no", 1: "yes"}
    assert pmeta.file_label == "participants"
    assert pmeta.column_names_to_labels["bilirubin_umol_l"] == f"{BILIRUBIN_LABEL} (µmol/L)"
    assert participants["randomized_at"].to_list()[0] == datetime(2025, 2, 1, 9, 0)


def test_dictionary_lists_every_column_and_refuses_a_missing_entry(tmp_path: Path) -> None:
    tables, dictionary = _tables()
    path = write_data_dictionary(tables, dictionary, tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert [(r["table"], r["column"]) for r in rows] == [(t, c) for t, f in tables.items() for c in f.columns]
    sofa = next(r for r in rows if r["column"] == "sofa_total")
    assert sofa["derived_from"].startswith("sofa-1996") and sofa["range"] == "0 to 24"
    infection = next(r for r in rows if r["column"] == "infection_status")
    assert infection["code_list"] == "1=resolved; 2=improving; 3=persistent"
    ferritin = next(r for r in rows if r["column"] == "ferritin_ng_ml")
    assert (ferritin["unit"], ferritin["loinc"], ferritin["name_in_file"]) == (
        "ng/mL",
        "2276-4",
        "ferritin_ng_ml",
    )

    del dictionary["daily_assessments"]["platelets"]
    for call in (
        lambda: write_data_dictionary(tables, dictionary, tmp_path / "d2"),
        lambda: write_statistical(tables, dictionary, tmp_path / "s2", "sav"),
    ):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.field == "daily_assessments.platelets"
    assert not (tmp_path / "d2").exists() and not (tmp_path / "s2").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_statistical_refuses_a_value_outside_the_code_list(tmp_path: Path) -> None:
    tables, dictionary = _tables()
    tables["daily_assessments"] = tables["daily_assessments"].with_columns(
        pl.Series("infection_status", ["persistent", "cured", None])
    )
    with pytest.raises(InputError) as err:
        write_statistical(tables, dictionary, tmp_path / "dta", "dta")
    assert (err.value.field, err.value.value) == ("daily_assessments.infection_status", "cured")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.text(alphabet="abdgilnorstvwy_0123456789.-", min_size=1, max_size=40), max_size=25, unique=True
    ),
    st.sampled_from(["xpt", "dta", "sav"]),
)
def test_names_in_file_are_valid_unique_and_kept_when_they_fit(columns: list[str], fmt: str) -> None:
    names = names_in_file({"t": pl.DataFrame(schema=columns)}, fmt).columns["t"]  # type: ignore[arg-type]
    limit = {"xpt": 8, "dta": 32, "sav": 64}[fmt]
    short = list(names.values())
    assert len({n.lower() for n in short}) == len(columns)
    for column, name in names.items():
        assert len(name) <= limit and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
        if fmt == "dta":
            assert name.lower() not in STATA_RESERVED and not re.fullmatch(r"str\d+", name.lower())
        if fmt == "sav":
            assert name[0].isalpha() and name.lower() not in SPSS_RESERVED
        if (
            fmt == "sav"
            and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", column)
            and column.lower() not in SPSS_RESERVED
        ):
            assert name == column  # every such name fits SPSS's 64 characters: kept as it is
