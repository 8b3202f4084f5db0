"""MIMIC-IV adapter: a small full-layout fixture (chartevents present) written here, and the real
MIMIC-IV demo (MEDS chart events), including the one stay whose ferritin exceeds the MALS cut-off."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml
from sourcetools import shared, status, write_csv

from immunostrat.sources import SourceData, load_mapping, load_mimic_iv, load_source
from immunostrat.sources.mapping import concept_entries


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def values(data: SourceData, concept: str, stay: str | None = None) -> list[float]:
    frame = data.observations.filter(pl.col("concept") == concept)
    if stay is not None:
        frame = frame.filter(pl.col("patient_id") == stay)
    return frame.sort("time", "value")["value"].to_list()


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ICU stays in the full MIMIC-IV layout, with the junk real data has."""
    root = tmp_path_factory.mktemp("mimic")
    write_csv(
        root / "hosp/patients.csv",
        """
        subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
        1,F,60,2150,2011 - 2013,
        2,M,70,2148,2011 - 2013,2150-02-05
    """,
    )
    write_csv(
        root / "hosp/admissions.csv",
        """
        subject_id,hadm_id,admittime,dischtime,deathtime
        1,11,2150-01-01 00:00:00,2150-01-10 00:00:00,
        2,21,2150-02-01 00:00:00,2150-02-04 12:00:00,2150-02-04 12:00:00
    """,
    )
    write_csv(
        root / "icu/icustays.csv",
        """
        subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los
        1,11,100,MICU,MICU,2150-01-02 00:00:00,2150-01-06 00:00:00,4
        2,21,200,SICU,SICU,2150-02-01 06:00:00,2150-02-04 12:00:00,3.25
    """,
    )
    write_csv(
        root / "hosp/labevents.csv",
        """
        labevent_id,subject_id,hadm_id,specimen_id,itemid,charttime,value,valuenum,valueuom
        1,1,11,1,50924,2150-01-03 08:00:00,5000,5000,ng/mL
        2,1,11,2,50912,2150-01-03 08:00:00,999,999,mg/dL
        3,1,11,3,50885,2150-01-01 22:00:00,1.95,1.95,mg/dL
        4,1,11,4,51265,2149-12-20 08:00:00,140,140,K/uL
        5,2,21,5,50885,2150-02-02 08:00:00,___,,mg/dL
        6,2,21,6,50813,2150-02-02 08:00:00,4.1,4.1,mmol/L
    """,
    )
    write_csv(
        root / "icu/chartevents.csv",
        """
        subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning
        1,11,100,,2150-01-02 01:00:00,,220052,65,65,mmHg,0
        1,11,100,,2150-01-02 01:00:00,,220739,4,4,,0
        1,11,100,,2150-01-02 01:00:00,,223900,5,5,,0
        1,11,100,,2150-01-02 01:00:00,,223901,6,6,,0
        1,11,100,,2150-01-02 05:00:00,,220739,2,2,,0
        1,11,100,,2150-01-02 01:00:00,,223835,50,50,,0
        1,11,100,,2150-01-02 02:00:00,,223835,0.5,0.5,,0
        1,11,100,,2150-01-02 03:00:00,,223835,5,5,,0
        1,11,100,,2150-01-02 00:30:00,,226512,80,80,kg,0
        1,11,100,,2150-01-02 04:00:00,,226732,Endotracheal tube,,,0
        1,11,100,,2150-01-02 05:00:00,,226732,Nasal cannula,,,0
        2,21,200,,2150-02-01 07:00:00,,223761,98.6,98.6,°F,0
        2,21,200,,2150-02-01 07:00:00,,220045,480,480,bpm,0
    """,
    )
    write_csv(
        root / "icu/inputevents.csv",
        """
        subject_id,hadm_id,stay_id,starttime,endtime,itemid,amount,amountuom,rate,rateuom,patientweight,statusdescription
        1,11,100,2150-01-02 02:00:00,2150-01-02 04:30:00,221906,1,mg,8,mcg/min,80,ChangeDose/Rate
        1,11,100,2150-01-02 04:30:00,2150-01-02 05:00:00,221906,1,mg,8.08,mcg/min,80,ChangeDose/Rate
        1,11,100,2150-01-02 05:00:00,2150-01-02 05:30:00,221906,1,mg,0.12,mcg/kg/min,80,Rewritten
        2,21,200,2150-02-01 08:00:00,2150-02-01 09:00:00,222315,2.4,units,2.4,units/hour,90,FinishedRunning
        2,21,200,2150-02-01 08:00:00,2150-02-01 09:00:00,221662,1,mg,5,mcg/kg/min,90,FinishedRunning
    """,
    )
    write_csv(
        root / "icu/outputevents.csv",
        """
        subject_id,hadm_id,stay_id,charttime,itemid,value,valueuom
        1,11,100,2150-01-02 06:00:00,226559,100,ml
        1,11,100,2150-01-02 07:00:00,227488,50,ml
    """,
    )
    write_csv(
        root / "icu/procedureevents.csv",
        """
        subject_id,hadm_id,stay_id,starttime,endtime,itemid,value,valueuom
        2,21,200,2150-02-01 10:00:00,2150-02-01 12:30:00,225792,150,min
    """,
    )
    write_csv(
        root / "hosp/prescriptions.csv",
        """
        subject_id,hadm_id,starttime,stoptime,drug_type,drug,route
        1,11,2150-01-02 03:00:00,2150-01-05 00:00:00,MAIN,Vancomycin,IV
        1,11,2150-01-02 03:00:00,2150-01-05 00:00:00,MAIN,Erythromycin 0.5% Ophth Oint,OU
        1,11,2150-01-02 03:00:00,2150-01-05 00:00:00,MAIN,Acetaminophen,PO
    """,
    )
    write_csv(
        root / "hosp/microbiologyevents.csv",
        """
        microevent_id,subject_id,hadm_id,micro_specimen_id,chartdate,charttime,spec_type_desc,org_name
        1,1,11,900,2150-01-02 00:00:00,2150-01-02 02:00:00,BLOOD CULTURE,E. coli
        2,1,11,900,2150-01-02 00:00:00,2150-01-02 02:00:00,BLOOD CULTURE,E. coli
        3,1,11,901,2150-01-03 00:00:00,,URINE,
    """,
    )
    return root


@pytest.fixture(scope="module")
def mini_data(mini: Path) -> SourceData:
    return load_mimic_iv(mini)


def test_mapping_is_data_and_demo_inherits() -> None:
    full = load_mapping("mimic-iv")
    demo = load_mapping("mimic-iv-demo")
    assert demo["inherits"] == "mimic-iv"
    assert demo["chart_source"] == "meds" and full["chart_source"] == "chartevents"
    assert demo["concepts"] == full["concepts"]  # the demo states only differences
    assert demo["tables"]["chartevents"]["subject_column"] == "subject_id"
    assert "stay_column" in full["tables"]["chartevents"]
    assert {"mhla_dr", "procalcitonin"} <= set(full["absent"])


def test_mini_stays(mini_data: SourceData) -> None:
    stays = mini_data.stays.sort("stay_id")
    assert stays["stay_id"].to_list() == ["100", "200"]
    assert stays["age"].to_list() == [60.0, 72.0]  # anchor_age + (year of ICU admission - anchor_year)
    assert stays["sex"].to_list() == ["F", "M"]
    assert stays["weight_kg"].to_list() == [80.0, 90.0]  # admission weight; else the infusion's weight
    assert stays["death_time"].to_list() == [None, t("2150-02-04 12:00:00")]


def test_mini_labs_units_and_junk(mini_data: SourceData) -> None:
    assert values(mini_data, "ferritin") == [5000.0]
    assert values(mini_data, "bilirubin", "100") == [1.95]  # 2 h before ICU admission: in the 6-h window
    assert values(mini_data, "platelets") == []  # 12 days before admission: in no stay
    assert values(mini_data, "creatinine") == []  # 999 mg/dL: dropped, counted
    dropped = mini_data.tables["dropped"]
    reasons = {(r["concept"], r["reason"]): r["rows"] for r in dropped.iter_rows(named=True)}
    assert reasons[("creatinine", "outside the plausible range")] == 1
    assert reasons[("platelets", "outside every ICU stay window")] == 1
    assert reasons[("bilirubin", "no value")] == 1
    assert reasons[("heart_rate", "outside the plausible range")] == 1  # 480 bpm
    assert "creatinine" in [c.concept for c in mini_data.absent()]
    assert "1 outside the plausible range" in status(mini_data, "creatinine")[2]


def test_mini_chart_concepts(mini_data: SourceData) -> None:
    assert values(mini_data, "map") == [65.0]
    assert values(mini_data, "gcs") == [15.0]  # eye 4 + verbal 5 + motor 6; the lone eye score is left out
    assert values(mini_data, "fio2") == [0.5, 0.5]  # 50 (%) and 0.5 (fraction); 5 is neither: dropped
    assert values(mini_data, "temperature") == [37.0]  # 98.6 degF
    vent = mini_data.observations.filter(pl.col("concept") == "mechanical_ventilation")
    assert vent.filter(pl.col("patient_id") == "100")["time"].to_list() == [t("2150-01-02 04:00:00")]
    vent200 = vent.filter(pl.col("patient_id") == "200").sort("time")
    assert vent200["time"].to_list() == [
        t("2150-02-01 10:00:00"),
        t("2150-02-01 11:00:00"),
        t("2150-02-01 12:00:00"),
        t("2150-02-01 12:30:00"),
    ]
    assert vent200["value"].to_list() == [1.0, 1.0, 1.0, 0.0]  # off at the end of the period


def test_mini_vasopressors_use_recorded_weight(mini_data: SourceData) -> None:
    # 8 mcg/min / 80 kg (the row's patientweight) = 0.1 exactly: the SOFA edge (<= 0.1 -> 3 points);
    # 8.08 mcg/min = 0.101 (> 0.1 -> 4 points). The Rewritten row is left out.
    ne = mini_data.observations.filter(pl.col("concept") == "norepinephrine_rate").sort("time")
    # 02:00-04:30 hourly, 04:30 the next rate (no stop: it continues), 05:00 stop (0)
    assert ne["value"].to_list() == [0.1, 0.1, 0.1, 0.101, 0.0]
    assert ne["time"].to_list()[-1] == t("2150-01-02 05:00:00")
    assert ne["unit"].unique().to_list() == ["ug/kg/min"]
    # vasopressin 2.4 units/hour = 0.04 units/min (never x60)
    assert values(mini_data, "vasopressin_rate") == [0.04, 0.0]
    assert values(mini_data, "dopamine_rate") == [5.0, 0.0]
    intervals = mini_data.tables["intervals"]
    assert intervals.filter(pl.col("concept") == "norepinephrine_rate").height == 2


def test_mini_infection_events(mini_data: SourceData) -> None:
    assert values(mini_data, "antibiotic") == [1.0]  # vancomycin IV; the eye ointment is not systemic
    cultures = mini_data.observations.filter(pl.col("concept") == "culture").sort("time")
    # per specimen; the date-only one at the end of its day (mimic-code matches it by date)
    assert cultures["time"].to_list() == [t("2150-01-02 02:00:00"), t("2150-01-03 23:59:59")]
    assert values(mini_data, "urine_output") == [100.0]  # GU irrigant (227488) not counted


def test_mini_traceability_and_report(mini_data: SourceData) -> None:
    row = mini_data.observations.filter(pl.col("concept") == "ferritin").row(0, named=True)
    assert row["source"] == "mimic-iv:hosp/labevents.csv" and row["source_row"] == 1
    present = {c.concept for c in mini_data.report if c.status == "present"}
    assert {"ferritin", "map", "gcs", "norepinephrine_rate", "antibiotic", "culture"} <= present
    assert status(mini_data, "mhla_dr")[0] == "absent"
    assert "HLA-DR" in status(mini_data, "mhla_dr")[2]


def test_mini_through_registry(mini: Path) -> None:
    data = load_source("mimic-iv", mini)
    assert data.source == "mimic-iv" and data.stays.height == 2


def test_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    from immunostrat.errors import InputError

    with pytest.raises(InputError):
        load_mimic_iv(tmp_path)


# ---------------------------------------------------------------------------- the real demo
def test_demo_item_ids_exist_in_the_dictionaries() -> None:
    root = shared("mimic-iv-demo-2.2")
    labs = set(pl.read_csv(root / "hosp/d_labitems.csv.gz", infer_schema=False)["itemid"].to_list())
    items = set(pl.read_csv(root / "icu/d_items.csv.gz", infer_schema=False)["itemid"].to_list())
    mapping = load_mapping("mimic-iv")
    checked = 0
    for concept in mapping["concepts"]:
        for entry in concept_entries(mapping, concept):
            for itemid in entry.where.get("itemid", []):
                known = labs if entry.table == "labevents" else items
                assert itemid in known, f"{concept}: itemid {itemid} not in the demo dictionaries"
                checked += 1
    for key in ("weight_kg_itemids", "weight_lb_itemids", "height_cm_itemids", "height_in_itemids"):
        for itemid in mapping["stays"][key]:
            assert str(itemid) in items
    assert checked > 50


def test_demo_stays(mimic_demo: SourceData) -> None:
    stays = mimic_demo.stays
    assert stays.height == 140
    assert stays["stay_id"].n_unique() == 140
    assert stays["age"].min() >= 18
    assert stays["weight_kg"].null_count() <= 2
    assert mimic_demo.observations["patient_id"].is_in(stays["stay_id"].implode()).all()


def test_demo_the_one_mals_stay(mimic_demo: SourceData) -> None:
    """Exactly one ICU stay's ferritin exceeds 4,420 ng/mL (domain.md A1): stay 30932571."""
    high = mimic_demo.observations.filter((pl.col("concept") == "ferritin") & (pl.col("value") > 4420))
    assert high.height == 1
    row = high.row(0, named=True)
    assert row["patient_id"] == "30932571"
    assert row["value"] == 33546.0 and row["unit"] == "ng/mL"
    assert row["time"] == t("2116-03-02 05:59:00")
    assert row["source"] == "mimic-iv:hosp/labevents.csv.gz"


def test_demo_concepts_present(mimic_demo: SourceData) -> None:
    counts = mimic_demo.rows_by_concept()
    for concept in (
        "pao2", "fio2", "platelets", "bilirubin", "creatinine", "map", "gcs", "heart_rate", "resp_rate",
        "sbp", "temperature", "spo2", "lactate", "ferritin", "urine_output", "norepinephrine_rate",
        "epinephrine_rate", "dopamine_rate", "dobutamine_rate", "vasopressin_rate", "mechanical_ventilation",
        "antibiotic", "culture",
    ):  # fmt: skip
        assert counts.get(concept, 0) > 0, concept
    assert counts["map"] > 10_000  # from the MEDS chart events
    gcs = mimic_demo.observations.filter(pl.col("concept") == "gcs")["value"]
    assert gcs.min() >= 3 and gcs.max() <= 15
    assert mimic_demo.observations.filter(pl.col("concept") == "norepinephrine_rate")["value"].max() <= 5
    assert any("MEDS" in n for n in mimic_demo.notes)


def test_demo_meds_values_are_rounded_float32(mimic_demo: SourceData) -> None:
    # MEDS stores 35.3 degC as float32 35.29999923706055: it must arrive as 35.3, the charted value,
    # so that band edges (e.g. bilirubin 1.2) are compared with what was charted.
    temps = set(mimic_demo.observations.filter(pl.col("concept") == "temperature")["value"].to_list())
    assert 35.3 in temps
    assert not any(abs(v - 35.3) < 1e-5 and v != 35.3 for v in temps)
    fio2 = mimic_demo.observations.filter(
        (pl.col("concept") == "fio2") & pl.col("source").str.contains("meds")
    )["value"]
    assert ((fio2 * 100).round(6) == (fio2 * 100).round(0)).all()  # charted in whole percent


def test_demo_vasopressin_per_minute(mimic_demo: SourceData) -> None:
    root = shared("mimic-iv-demo-2.2")
    raw = pl.read_csv(root / "icu/inputevents.csv.gz", infer_schema=False).filter(
        pl.col("itemid") == "222315"
    )
    assert set(raw["rateuom"].to_list()) == {"units/hour"}
    top = raw["rate"].cast(pl.Float64).max()
    got = mimic_demo.observations.filter(pl.col("concept") == "vasopressin_rate")["value"].max()
    assert got == pytest.approx(top / 60, abs=1e-6)


def test_demo_report_lists_every_absence(mimic_demo: SourceData) -> None:
    absent = {c.concept: c.detail for c in mimic_demo.absent()}
    assert "mhla_dr" in absent and "il6" in absent
    dropped = mimic_demo.tables["dropped"]
    assert set(dropped.columns) == {"concept", "table", "reason", "rows"}
    assert dropped.filter(pl.col("reason") == "outside the plausible range")["rows"].sum() > 0


def test_demo_mapping_file_is_plain_yaml() -> None:
    from importlib import resources

    text = resources.files("immunostrat.sources").joinpath("mimic-iv-demo.yaml").read_text(encoding="utf-8")
    assert "concepts" not in yaml.safe_load(text)  # differences only


def test_meds_option_replaces_chartevents(mini: Path, tmp_path: Path) -> None:
    """``meds_path=`` makes a MEDS event file the chart source even where chartevents exists."""
    meds = pl.DataFrame(
        {
            "subject_id": [1, 1, 1],
            "time": [datetime(2150, 1, 2, 1), datetime(2150, 1, 2, 2), datetime(2150, 1, 3, 8)],
            "code": ["LAB//220052//mmHg", "LAB//223835//UNK", "LAB//50924//ng/mL"],
            "table": ["condition"] * 3,
            "value": pl.Series([66.0, 40.0, 99999.0], dtype=pl.Float32),
        }
    )
    path = tmp_path / "events.parquet"
    meds.write_parquet(path)
    data = load_mimic_iv(mini, meds_path=path)
    assert values(data, "map") == [66.0]  # from MEDS, not chartevents' 65
    assert values(data, "fio2") == [0.4]
    assert values(data, "ferritin") == [5000.0]  # lab codes in MEDS are not read twice
    assert data.observations.filter(pl.col("concept") == "map")["source"].to_list() == [
        "mimic-iv:meds/events.parquet"
    ]
