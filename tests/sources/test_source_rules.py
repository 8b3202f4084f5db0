"""Source rules the issue's comparison with mimic-code and ricu settled, each on both sides: arterial
PaO2 only, GCS of intubated patients, infection events reaching every stay's look-back, eICU stops
charted in a unit that cannot be converted, and each eICU stay's hospital."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from sourcetools import write_csv

from immunostrat.sources import SourceData, load_eicu, load_mimic_iv
from immunostrat.sources.collect import assign_to_stays
from immunostrat.sources.mapping import load_mapping
from immunostrat.sources.mimic_iv import meds_tube_verbal


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rows(data: SourceData, concept: str, stay: str) -> list[tuple[datetime, float]]:
    frame = data.observations.filter((pl.col("concept") == concept) & (pl.col("patient_id") == stay))
    return [(r["time"], r["value"]) for r in frame.sort("time", "value").iter_rows(named=True)]


@pytest.fixture(scope="module")
def mimic(tmp_path_factory: pytest.TempPathFactory) -> SourceData:
    """One subject with two ICU stays three days apart (full layout: chartevents with text values)."""
    root = tmp_path_factory.mktemp("mimic-rules")
    write_csv(
        root / "hosp/patients.csv",
        """
        subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
        1,F,60,2150,2011 - 2013,
    """,
    )
    write_csv(
        root / "hosp/admissions.csv",
        """
        subject_id,hadm_id,admittime,dischtime,deathtime
        1,11,2150-01-01 00:00:00,2150-01-20 00:00:00,
    """,
    )
    write_csv(
        root / "icu/icustays.csv",
        """
        subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los
        1,11,100,MICU,MICU,2150-01-02 00:00:00,2150-01-04 00:00:00,2
        1,11,200,MICU,MICU,2150-01-06 00:00:00,2150-01-09 00:00:00,3
    """,
    )
    # specimen 1 arterial, 2 venous, 3 mixed venous, 4 without a specimen-type row
    write_csv(
        root / "hosp/labevents.csv",
        """
        labevent_id,subject_id,hadm_id,specimen_id,itemid,charttime,value,valuenum,valueuom
        1,1,11,1,52033,2150-01-02 02:00:00,ART.,,
        2,1,11,1,50821,2150-01-02 02:00:00,80,80,mm Hg
        3,1,11,2,52033,2150-01-02 04:00:00,VEN.,,
        4,1,11,2,50821,2150-01-02 04:00:00,40,40,mm Hg
        5,1,11,3,52033,2150-01-02 05:00:00,MIX.,,
        6,1,11,3,50821,2150-01-02 05:00:00,35,35,mm Hg
        7,1,11,4,50821,2150-01-02 06:00:00,90,90,mm Hg
    """,
    )
    write_csv(
        root / "icu/chartevents.csv",
        """
        subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning
        1,11,100,,2150-01-02 01:00:00,,220739,2,2,,0
        1,11,100,,2150-01-02 01:00:00,,223900,No Response-ETT,1,,0
        1,11,100,,2150-01-02 01:00:00,,223901,4,4,,0
        1,11,100,,2150-01-02 03:00:00,,220739,2,2,,0
        1,11,100,,2150-01-02 03:00:00,,223900,No Response,1,,0
        1,11,100,,2150-01-02 03:00:00,,223901,4,4,,0
    """,
    )
    # cultures in stay 100 (76 h and 60 h before stay 200), one between the stays; an antibiotic in 200
    write_csv(
        root / "hosp/microbiologyevents.csv",
        """
        microevent_id,subject_id,hadm_id,micro_specimen_id,chartdate,charttime,spec_type_desc,org_name
        1,1,11,900,2150-01-02 00:00:00,2150-01-02 20:00:00,BLOOD CULTURE,
        2,1,11,901,2150-01-05 00:00:00,2150-01-05 20:00:00,URINE,
        3,1,11,902,2150-01-03 00:00:00,2150-01-03 12:00:00,SPUTUM,
        4,1,11,903,2150-01-07 00:00:00,,URINE,
    """,
    )
    write_csv(
        root / "hosp/prescriptions.csv",
        """
        subject_id,hadm_id,starttime,stoptime,drug_type,drug,route
        1,11,2150-01-06 10:00:00,2150-01-08 00:00:00,MAIN,Vancomycin,IV
    """,
    )
    return load_mimic_iv(root)


def test_only_arterial_po2_is_pao2(mimic: SourceData) -> None:
    assert rows(mimic, "pao2", "100") == [(t("2150-01-02 02:00:00"), 80.0)]
    dropped = mimic.tables["dropped"].filter(pl.col("concept") == "pao2")
    assert dropped.filter(pl.col("reason") == "not an arterial specimen")["rows"].sum() == 3


def test_gcs_with_the_tube_is_presumed_normal(mimic: SourceData) -> None:
    # E2 + V "No Response-ETT" + M4 -> 15 (mimic-code); E2 + V "No Response" + M4 -> 7
    assert rows(mimic, "gcs", "100") == [(t("2150-01-02 01:00:00"), 15.0), (t("2150-01-02 03:00:00"), 7.0)]


def test_a_culture_reaches_every_stay_whose_window_holds_it(mimic: SourceData) -> None:
    # 2 Jan 20:00 lies inside stay 100 and 76 h before 200 (outside its 72-h look-back); 5 Jan 20:00
    # lies after 100 (no after-window) and 28 h before 200: it belongs to 200's look-back
    # 3 Jan 12:00 lies inside stay 100 and 60 h before 200: it reaches both
    assert rows(mimic, "culture", "100") == [(t("2150-01-02 20:00:00"), 1.0), (t("2150-01-03 12:00:00"), 1.0)]
    assert rows(mimic, "culture", "200")[:2] == [
        (t("2150-01-03 12:00:00"), 1.0),
        (t("2150-01-05 20:00:00"), 1.0),
    ]
    assert rows(mimic, "antibiotic", "200") == [(t("2150-01-06 10:00:00"), 1.0)]


def test_an_event_in_two_windows_reaches_both_stays() -> None:
    stays = pl.DataFrame(
        {
            "patient_id": ["1", "1"],
            "stay_id": ["a", "b"],
            "icu_intime": [t("2150-01-02 00:00:00"), t("2150-01-04 00:00:00")],
            "icu_outtime": [t("2150-01-03 00:00:00"), t("2150-01-05 00:00:00")],
        }
    )
    events = pl.DataFrame({"subject": ["1"], "time": [t("2150-01-02 12:00:00")], "_rid": [1]})
    one = assign_to_stays(events, stays, subject="subject", before=timedelta(hours=72))
    both = assign_to_stays(events, stays, subject="subject", before=timedelta(hours=72), every_stay=True)
    assert one["stay_id"].to_list() == ["a"]
    assert sorted(both["stay_id"].to_list()) == ["a", "b"]


@pytest.fixture(scope="module")
def eicu(tmp_path_factory: pytest.TempPathFactory) -> SourceData:
    root = tmp_path_factory.mktemp("eicu-rules")
    write_csv(
        root / "patient.csv",
        """
        patientunitstayid,patienthealthsystemstayid,hospitalid,gender,age,hospitaladmitoffset,hospitaldischargeoffset,hospitaldischargestatus,unitdischargeoffset,unitdischargestatus,admissionweight,admissionheight,uniquepid
        10,1,73,Female,60,0,3000,Alive,2000,Alive,60,160,001-1
        20,2,264,Male,45,0,5000,Alive,4000,Alive,80,180,001-2
    """,
    )
    write_csv(
        root / "infusiondrug.csv",
        """
        infusiondrugid,patientunitstayid,infusionoffset,drugname,drugrate,infusionrate,drugamount,volumeoffluid,patientweight
        1,10,60,Norepinephrine (mcg/min),6,,,,
        2,10,180,Norepinephrine (ml/hr),0,,,,
        3,10,240,Norepinephrine (),0,,,,
        4,10,300,Norepinephrine (ml/hr),10,,,,
    """,
    )
    return load_eicu(root)


def test_eicu_zero_rate_in_any_unit_is_a_stop(eicu: SourceData) -> None:
    got = rows(eicu, "norepinephrine_rate", "10")
    assert [v for _, v in got] == [0.1, 0.0, 0.0]  # 6 mcg/min / 60 kg, then the two stops
    dropped = eicu.tables["dropped"].filter(pl.col("concept") == "norepinephrine_rate")
    assert dropped["rows"].sum() == 1  # the 10 ml/hr rate cannot be converted: dropped, counted


def test_eicu_stays_carry_their_hospital(eicu: SourceData) -> None:
    sites = eicu.tables["care_sites"]
    assert dict(zip(sites["stay_id"], sites["care_site"], strict=True)) == {"10": "73", "20": "264"}


def test_a_date_only_culture_is_timed_at_the_end_of_its_day(mimic: SourceData) -> None:
    # chartdate 7 Jan, no charttime: 23:59:59 (not midnight, 24 h before it may have been taken);
    # cultures with a charttime keep it
    assert rows(mimic, "culture", "200")[-1] == (t("2150-01-07 23:59:59"), 1.0)
    assert (t("2150-01-05 20:00:00"), 1.0) in rows(mimic, "culture", "200")


def test_meds_verbal_one_during_invasive_ventilation_is_the_tube(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "icu/procedureevents.csv",
        """
        subject_id,hadm_id,stay_id,starttime,endtime,itemid,value,valueuom
        1,11,100,2150-01-02 00:00:00,2150-01-02 12:00:00,225792,720,min
    """,
    )
    chart = pl.LazyFrame(
        {
            "source_row": [1, 2, 3],
            "subject_id": ["1", "1", "1"],
            "charttime": [datetime(2150, 1, 2, 6), datetime(2150, 1, 2, 18), datetime(2150, 1, 2, 6)],
            "itemid": ["223900", "223900", "223901"],
            "valuenum": ["1.0", "1.0", "1.0"],
            "valueuom": [None, None, None],
            "value": [None, None, None],
        },
        schema_overrides={"value": pl.String, "valueuom": pl.String},
    )
    got = meds_tube_verbal(chart, tmp_path, load_mapping("mimic-iv-demo")).collect().sort("source_row")
    # verbal 1 at 06:00 (ventilated) -> the tube; at 18:00 (extubated) and the motor 1 stay as they were
    assert got["value"].to_list() == ["No Response-ETT", None, None]
