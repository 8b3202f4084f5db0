#!/usr/bin/env python3
"""Generate the bundled synthetic demo cohort (deterministic): `python scripts/make_demo_cohort.py`.

Writes src/immunostrat/data/demo/{observations,patients}.csv: a few hundred septic ICU patients over
five days with realistic values in mixed units, covering every ImmunoSep endotype (MALS,
immunoparalysis, intermediate, and unknown: missing or stale HLA-DR). Endotype shares follow the
PROVIDE screening population (MALS 20.0%, immunoparalysis 42.9%, intermediate 37.1%; domain.md A2)
with a few unknowns added. Synthetic: no real patient is behind any row.
"""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "immunostrat" / "data" / "demo"
START = datetime(2025, 1, 6, 0, 0, tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(n_patients: int = 300, days: int = 5, seed: int = 20251208) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    patients: list[dict] = []
    rows: list[dict] = []
    groups = rng.choice(
        ["mals", "immunoparalysis", "intermediate", "unknown"], size=n_patients, p=[0.19, 0.40, 0.34, 0.07]
    )
    for i in range(n_patients):
        pid = f"DEMO-{i + 1:04d}"
        group = str(groups[i])
        sex = "F" if rng.random() < 0.42 else "M"
        age = int(np.clip(rng.normal(67, 13), 19, 95))
        weight = float(np.round(np.clip(rng.normal(78 if sex == "M" else 68, 14), 40, 160), 1))
        height = float(np.round(np.clip(rng.normal(176 if sex == "M" else 163, 7), 145, 205), 0))
        admission = START + timedelta(hours=float(rng.integers(0, 24 * 60)))
        patients.append(
            {
                "patient_id": pid,
                "age": age,
                "sex": sex,
                "weight_kg": weight,
                "height_cm": height,
                "admission_time": _iso(admission),
            }
        )
        severity = {"mals": 1.0, "immunoparalysis": 0.7, "intermediate": 0.45, "unknown": 0.5}[group]
        severity = float(np.clip(severity + rng.normal(0, 0.2), 0.05, 1.3))
        improving = rng.random() < 0.55

        def add(t: datetime, concept: str, value: float | str, unit: str, pid: str = pid) -> None:
            rows.append(
                {"patient_id": pid, "time": _iso(t), "concept": concept, "value": value, "unit": unit}
            )

        # Immune biomarkers at screening (day 0, 08:00) and a repeat on day 3.
        for day in (0, 3):
            t = admission + timedelta(days=day, hours=8)
            if group == "mals":
                ferritin = float(rng.lognormal(np.log(9000), 0.5)) + 4500
            else:
                ferritin = float(np.clip(rng.lognormal(np.log(900), 0.8), 30, 4400))
            unit_pick = rng.integers(0, 3)
            if unit_pick == 0:
                add(t, "ferritin", round(ferritin, 0), "ng/mL")
            elif unit_pick == 1:
                add(t, "ferritin", round(ferritin, 0), "ug/L")
            else:
                add(t, "ferritin", round(ferritin * 2.247, 0), "pmol/L")  # domain.md D: pmol/L / 2.247
            if group == "unknown" and day == 0:
                continue  # HLA-DR never measured on the screening day: unknown
            if group == "immunoparalysis":
                hla = float(rng.uniform(800, 4900))
            elif group == "intermediate":
                hla = float(rng.uniform(5200, 22000))
            else:
                hla = float(rng.uniform(2000, 20000))
            if group == "unknown":
                continue
            add(
                t + timedelta(minutes=30),
                "mhla_dr",
                round(hla, 0),
                rng.choice(["AB/C", "molecules/cell", "receptors/cell"]),
            )
        # Infection work-up: culture then antibiotic within hours (Sepsis-3 suspected infection).
        add(admission + timedelta(hours=1), "culture", 1, "")
        add(admission + timedelta(hours=2), "antibiotic", 1, "")
        ventilated = rng.random() < 0.35 + 0.3 * severity
        shock = rng.random() < 0.15 + 0.45 * severity
        renal_failure = rng.random() < 0.1 + 0.25 * severity
        for day in range(days):
            trend = (1 - 0.15 * day) if improving else (1 + 0.05 * day)
            s = float(np.clip(severity * trend, 0.02, 1.5))
            t_lab = admission + timedelta(days=day, hours=6)
            platelets = float(np.clip(rng.normal(260 - 190 * s, 30), 8, 600))
            if rng.random() < 0.5:
                add(t_lab, "platelets", round(platelets, 0), "10^9/L")
            else:
                add(t_lab, "platelets", round(platelets, 0), "x10^3/uL")
            bili = float(np.clip(rng.lognormal(np.log(0.6 + 4 * s**2), 0.35), 0.1, 30))
            if rng.random() < 0.5:
                add(t_lab, "bilirubin", round(bili, 2), "mg/dL")
            else:
                add(t_lab, "bilirubin", round(bili * 17.1, 1), rng.choice(["umol/L", "µmol/L"]))
            crea = float(
                np.clip(rng.lognormal(np.log(0.8 + (3.5 if renal_failure else 1.2) * s), 0.25), 0.3, 12)
            )
            if rng.random() < 0.5:
                add(t_lab, "creatinine", round(crea, 2), "mg/dL")
            else:
                add(t_lab, "creatinine", round(crea * 88.4, 0), "umol/L")
            lactate = float(np.clip(rng.lognormal(np.log(1.0 + 3 * s), 0.3), 0.4, 20))
            if rng.random() < 0.7:
                add(t_lab, "lactate", round(lactate, 1), "mmol/L")
            else:
                add(t_lab, "lactate", round(lactate * 9.01, 0), "mg/dL")
            add(t_lab, "crp", round(float(np.clip(rng.normal(60 + 200 * s, 40), 1, 600)), 0), "mg/L")
            for hour in (2, 14):
                t = admission + timedelta(days=day, hours=hour)
                fio2 = float(np.clip(0.3 + 0.5 * s + rng.normal(0, 0.08), 0.21, 1.0))
                if rng.random() < 0.5:
                    add(t, "fio2", round(fio2 * 100, 0), "%")
                else:
                    add(t, "fio2", round(fio2, 2), "")
                if ventilated and s > 0.3:
                    add(t + timedelta(minutes=5), "mechanical_ventilation", 1, "")
                pao2 = float(np.clip(rng.normal(105 - 35 * s, 12), 45, 250))
                if rng.random() < 0.75:
                    add(t + timedelta(minutes=20), "pao2", round(pao2, 0), "mmHg")
                else:
                    add(t + timedelta(minutes=20), "pao2", round(pao2 / 7.50062, 2), "kPa")
                gcs = int(np.clip(round(15 - 9 * s + rng.normal(0, 1)), 3, 15))
                add(t, "gcs", gcs, "")
                add(t, "resp_rate", round(float(np.clip(rng.normal(18 + 10 * s, 3), 6, 50)), 0), "/min")
                add(
                    t,
                    "temperature",
                    round(float(np.clip(rng.normal(37.4 + 1.2 * s, 0.5), 34.5, 41.5)), 1),
                    "Cel",
                )
            for hour in (0, 6, 12, 18):
                t = admission + timedelta(days=day, hours=hour, minutes=10)
                add(t, "map", round(float(np.clip(rng.normal(82 - 18 * s, 7), 40, 130)), 0), "mmHg")
                add(t, "sbp", round(float(np.clip(rng.normal(120 - 25 * s, 12), 60, 200)), 0), "mmHg")
                add(t, "heart_rate", round(float(np.clip(rng.normal(85 + 30 * s, 10), 40, 180)), 0), "/min")
            for hour in range(4, 25, 4):
                t = admission + timedelta(days=day, hours=hour)
                ml = float(np.clip(rng.normal((110 - 90 * s) if not renal_failure else 25, 20), 0, 600))
                add(t, "urine_output", round(ml, 0), "mL")
            if shock and s > 0.35:
                rate = float(np.clip(0.05 + 0.25 * s + rng.normal(0, 0.04), 0.02, 1.2))
                t = admission + timedelta(days=day, hours=1)
                # Charted at the start and re-charted 2 h later: one infusion run that lasted over
                # an hour, so it counts under the 1-hour rule (sofa-1996.yaml); the re-charting
                # draws no random number, so every other value is unchanged.
                if rng.random() < 0.6:
                    nor_value, nor_unit = round(rate, 3), "ug/kg/min"
                else:
                    nor_value, nor_unit = round(rate * weight, 1), "ug/min"
                add(t, "norepinephrine_rate", nor_value, nor_unit)
                add(t + timedelta(hours=2), "norepinephrine_rate", nor_value, nor_unit)
                if s > 0.9 and rng.random() < 0.3:
                    add(t + timedelta(minutes=30), "vasopressin_rate", 2.4, "units/h")
    rows.sort(key=lambda r: (r["patient_id"], r["time"], r["concept"]))
    return patients, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    patients, rows = generate(args.patients)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in (("patients.csv", patients), ("observations.csv", rows)):
        with (args.out / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    print(f"wrote {len(patients)} patients and {len(rows)} observations to {args.out}")


if __name__ == "__main__":
    main()
