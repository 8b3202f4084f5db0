"""A whole trial through the API: set up, screen 50 patients with mixed units, randomize the
eligible, 28 days of assessments, outcomes and adverse events, emergency unblinding, blinded and
(after lock) unblinded export checked by the analysis module's schema validator, audit verified."""

from __future__ import annotations

import io
import random
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from apiserver import Server

from immunostrat.analysis.schema import validate_export

# (value, unit) pairs that express the same ferritin in ng/mL in the units the dictionary accepts
FERRITIN_UNITS = [("ng/mL", 1.0), ("ug/L", 1.0), ("mg/L", 0.001), ("pmol/L", 2.247)]
HLA_UNITS = ["AB/C", "molecules/cell", "receptors/cell"]


def _patient(rng: random.Random, i: int) -> tuple[dict[str, Any], str]:
    """A screening body and the endotype it was built to have (values far from the cut-offs)."""
    intended = ["mals", "immunoparalysis", "intermediate"][i % 3]
    ferritin = rng.uniform(6000, 20000) if intended == "mals" else rng.uniform(200, 3000)
    hla = rng.uniform(1000, 4000) if intended != "intermediate" else rng.uniform(8000, 25000)
    unit, factor = FERRITIN_UNITS[i % 4]
    time = f"2025-03-{1 + i % 20:02d}T08:00:00Z"
    body = {
        "site": ["S1", "S2", "S3"][i % 3 if i % 5 else 0],
        "age": 40 + i % 45,
        "sex": "F" if i % 2 else "M",
        "weight_kg": 60 + i % 40,
        "infection_site": ["CAP", "HAP", "VAP", "bacteremia"][i % 4],
        "septic_shock": i % 4 == 0,
        "exclusions": {"neutropenia": i % 17 == 5, "do_not_resuscitate": False},
        "observations": [
            {"concept": "ferritin", "value": round(ferritin * factor, 4), "unit": unit, "time": time},
            {"concept": "mhla_dr", "value": round(hla), "unit": HLA_UNITS[i % 3], "time": time},
            {
                "concept": "creatinine",
                "value": 90.0 if i % 2 else 1.0,
                "unit": "umol/L" if i % 2 else "mg/dL",
                "time": time,
            },
        ],
    }
    return body, intended


def _unzip(content: bytes, folder: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        z.extractall(folder)
    return folder


def test_full_trial_through_the_api(server: Server, tmp_path: Path) -> None:
    rng = random.Random(2025)
    trial = server.new_trial(
        f"E2E-{server.kind}",
        sites=[{"code": c, "name": f"Hospital {c}"} for c in ("S1", "S2", "S3")],
        slots_per_stratum=30,
    )
    tid = trial["id"]
    assert len(trial["seed"]) == 64 and trial["seed_commitment"] != trial["seed"]
    # block sizes stay concealed from blinded roles
    with server.client("investigator") as inv, server.client("pharmacist") as ph:
        assert "block_multipliers" not in inv.get(f"/trials/{tid}").json()["config"]
        # nor the pharmacist: with the block sizes the next allocation of a stratum could be foreseen
        assert "block_multipliers" not in ph.get(f"/trials/{tid}").json()["config"]
    with server.client("admin") as admin:
        assert admin.get(f"/trials/{tid}").json()["config"]["block_multipliers"] == [1, 2, 3]

    # screening: 50 patients, mixed units, decided by the protocol engine
    eligible: list[int] = []
    screened = 0
    with server.client("investigator") as inv:
        for i in range(50):
            body, intended = _patient(rng, i)
            r = inv.post(f"/trials/{tid}/participants", json=body)
            assert r.status_code == 201, r.text
            out = r.json()
            screened += 1
            assert out["endotype"] == intended, (i, out)
            assert out["reasons"] and out["protocol_id"] == "immunosep-2025"
            excluded = body["exclusions"]["neutropenia"]
            assert out["eligible"] == (intended in ("mals", "immunoparalysis") and not excluded)
            if intended == "mals":
                assert out["therapy"] == "anakinra" and "200 mg" in out["dose"]
            if out["eligible"]:
                eligible.append(out["participant_id"])
    assert screened == 50 and 25 <= len(eligible) <= 34

    # randomization of the eligible: investigators see kit numbers only
    kits: dict[int, str] = {}
    with server.client("investigator") as inv:
        for pid in eligible:
            r = inv.post(
                f"/trials/{tid}/participants/{pid}/randomize", headers={"Idempotency-Key": f"e2e-{pid}"}
            )
            assert r.status_code == 201, r.text
            assert "arm" not in r.json()
            kits[pid] = r.json()["kit_number"]
    with server.client("pharmacist") as ph:
        arms = {pid: ph.get(f"/trials/{tid}/participants/{pid}/allocation").json()["arm"] for pid in eligible}
    assert set(arms.values()) == {"immunotherapy", "placebo"}

    # 28 days of assessments (none after death), outcomes, adverse events
    deaths = {pid: 10 + k for k, pid in enumerate(eligible[::6])}

    def follow(pid: int) -> None:
        last = deaths.get(pid, 28)
        with server.client("investigator") as inv:
            for day in range(1, last + 1):
                sofa = max(0, 8 - day // 3 + (pid % 3))
                parts = [min(4, sofa // 6 + (1 if j < sofa % 6 else 0)) for j in range(6)]
                body: dict[str, Any] = dict(
                    zip(
                        [
                            "sofa_respiration",
                            "sofa_coagulation",
                            "sofa_liver",
                            "sofa_cardiovascular",
                            "sofa_cns",
                            "sofa_renal",
                        ],
                        parts,
                        strict=True,
                    )
                )
                body.update(day=day, doses_given=3 if day <= 15 else 0)
                if day in (1, 15):
                    ferritin_ug_l = 5000.0 - 100 * day
                    body["observations"] = [
                        {
                            "concept": "ferritin",
                            "value": ferritin_ug_l,
                            "unit": "ug/L",
                            "time": f"2025-04-{day:02d}T08:00:00Z",
                        }
                    ]
                if day == 15:
                    body["infection_status"] = "resolution"
                r = inv.post(f"/trials/{tid}/participants/{pid}/assessments", json=body)
                assert r.status_code == 201, r.text
                assert r.json()["sofa_total"] == sum(parts)
            outcome = {
                "last_contact_day": last,
                "infection_status_day15": "resolution" if last >= 15 else None,
            }
            if pid in deaths:
                outcome["death_day"] = last
            r = inv.put(f"/trials/{tid}/participants/{pid}/outcome", json=outcome)
            assert r.status_code == 200, r.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(follow, eligible))
    with server.client("investigator") as inv:
        r = inv.post(
            f"/trials/{tid}/participants/{eligible[1]}/adverse-events",
            json={
                "day": 3,
                "term": "anaemia",
                "serious": True,
                "seriousness": ["hospitalisation"],
                "severity": 3,
                "related": True,
            },
        )
        assert r.status_code == 201, r.text
        r = inv.post(
            f"/trials/{tid}/participants/{eligible[2]}/unblind",
            json={"reason": "severe haemorrhage, treating team must know the drug"},
        )
        assert r.status_code == 200 and r.json()["arm"] == arms[eligible[2]]
        assert (
            inv.get(f"/trials/{tid}/participants/{eligible[0]}/assessments").json()[0]["ferritin_ng_ml"]
            == 4900.0
        )

    # blinded export by the statistician: the analysis schema check passes
    with server.client("statistician") as st:
        r = st.get(f"/trials/{tid}/export", params={"blinded": "true"})
        assert r.status_code == 200, r.text
        blinded = validate_export(_unzip(r.content, tmp_path / "blinded"))
        assert set(blinded.participants["arm"]) == {"blinded"}
        assert st.get(f"/trials/{tid}/export", params={"blinded": "false"}).status_code == 409
    with server.client("admin") as ad:
        assert ad.post(f"/trials/{tid}/lock").json()["status"] == "locked"
    with server.client("statistician") as st:
        r = st.get(f"/trials/{tid}/export", params={"blinded": "false", "format": "parquet"})
        assert r.status_code == 200, r.text
    export = validate_export(_unzip(r.content, tmp_path / "unblinded"))
    assert export.participants.height == len(eligible)
    assert export.daily_assessments.height == sum(deaths.get(p, 28) for p in eligible)
    assert export.screening is not None and export.screening.height == 50
    by_pseudonym = dict(zip(export.participants["kit_number"], export.participants["arm"], strict=True))
    assert {by_pseudonym[kits[p]] for p in eligible} == set(arms.values())
    assert all(by_pseudonym[kits[p]] == arms[p] for p in eligible)
    assert export.outcomes.filter(export.outcomes["death_day"].is_not_null()).height == len(deaths)

    with server.client("monitor") as mon:
        verdict = mon.get("/audit/verify").json()
        assert verdict["ok"], verdict
        assert [e["participant_id"] for e in mon.get(f"/trials/{tid}/unblindings").json()] == [eligible[2]]
