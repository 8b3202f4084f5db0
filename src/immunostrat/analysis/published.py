"""Published trial results as data (``published/*.yaml``, each with its citation) and their
reproduction with this package's own functions.

:func:`reproduce` recomputes, from the published counts, every percentage, risk difference, odds
ratio, CI and P value a paper printed, and says which test's P value matches at the printed
precision (Fisher exact, Pearson chi-square, Yates, Boschloo, Barnard, mid-p, or none).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from typing import Any

import yaml

from immunostrat.analysis import stats

P_TESTS = (
    "fisher",
    "chi_square",
    "chi_square_yates",
    "fisher_mid_p",
    "fisher_central",
    "boschloo",
    "barnard",
)


def list_published() -> list[str]:
    folder = resources.files("immunostrat.analysis").joinpath("published")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_published(pub_id: str) -> dict[str, Any]:
    """One published record (the YAML as a dict)."""
    if pub_id not in list_published():
        raise KeyError(f"unknown published record {pub_id!r}; known: {', '.join(list_published())}")
    text = resources.files("immunostrat.analysis").joinpath("published", f"{pub_id}.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def round_half_up(value: float, decimals: int) -> float:
    """Round as journals do (0.335 -> 0.34 would need half-up on the exact decimal, not binary)."""
    q = Decimal(1).scaleb(-decimals)
    return float(Decimal(repr(value)).quantize(q, rounding=ROUND_HALF_UP))


def _decimals(x: float) -> int:
    text = repr(float(x))
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0


def matches(ours: float, printed: float, decimals: int | None = None) -> bool:
    """True when ``ours`` rounds (half up) to the printed value at the printed precision."""
    d = _decimals(printed) if decimals is None else decimals
    return abs(round_half_up(ours, d) - printed) < 10 ** (-d) / 2


def reproduce_binary(item: dict[str, Any]) -> dict[str, Any]:
    """Recompute one published 2x2 comparison (treated vs control counts)."""
    t, c = item["treated"], item["control"]
    args = (int(t["events"]), int(t["n"]), int(c["events"]), int(c["n"]))
    out: dict[str, Any] = {"id": item["id"], "label": item.get("label", item["id"]), "checks": []}

    def check(what: str, ours: float, printed: float, decimals: int | None = None) -> None:
        out["checks"].append(
            {"what": what, "ours": ours, "printed": printed, "match": matches(ours, printed, decimals)}
        )

    check("treated percent", 100 * args[0] / args[1], float(t["percent"]), 1)
    check("control percent", 100 * args[2] / args[3], float(c["percent"]), 1)
    if "risk_difference" in item:
        rd = stats.risk_difference(*args)
        pub = item["risk_difference"]
        assert rd.ci_low is not None and rd.ci_high is not None and rd.estimate is not None
        check("risk difference (points)", 100 * rd.estimate, float(pub["estimate"]), 1)
        check("RD lower (Newcombe)", 100 * rd.ci_low, float(pub["ci"][0]), 1)
        check("RD upper (Newcombe)", 100 * rd.ci_high, float(pub["ci"][1]), 1)
    if "odds_ratio" in item:
        orr = stats.odds_ratio(*args)
        pub = item["odds_ratio"]
        assert orr.ci_low is not None and orr.ci_high is not None and orr.estimate is not None
        check("odds ratio", orr.estimate, float(pub["estimate"]), 2)
        check("OR lower (Woolf)", orr.ci_low, float(pub["ci"][0]), 2)
        check("OR upper (Woolf)", orr.ci_high, float(pub["ci"][1]), 2)
    if "p_value" in item:
        pub_p = item["p_value"]
        alts = stats.exact_alternatives(*args)
        dec = int(pub_p["decimals"])
        matching = [name for name in P_TESTS if matches(alts[name], float(pub_p["value"]), dec)]
        out["p_values"] = alts
        out["p_printed"] = pub_p["printed"]
        out["p_matching_tests"] = matching
        out["p_expected_test"] = item.get("matching_test")
    if item.get("note"):
        out["note"] = " ".join(str(item["note"]).split())
    return out


def reproduce_ordinal(item: dict[str, Any]) -> dict[str, Any]:
    """Recompute a published ordinal comparison by expanding the category counts to participants."""
    import pandas as pd

    levels = list(item["levels"])
    rows = []
    for arm, treated in (("treated", 1), ("control", 0)):
        for lvl in levels:
            rows += [{"status": lvl, "treated": treated}] * int(item[arm][lvl])
    df = pd.DataFrame(rows)
    df["score"] = df["status"].map({lvl: i for i, lvl in enumerate(levels)})
    po = stats.ordinal_odds_ratio(df, "status", levels, "treated")
    mw = stats.mann_whitney(df.loc[df.treated == 1, "score"], df.loc[df.treated == 0, "score"])
    pub = item["odds_ratio"]
    assert po.estimate is not None and po.ci_low is not None and po.ci_high is not None
    n_t = sum(int(item["treated"][lvl]) for lvl in levels)
    n_c = sum(int(item["control"][lvl]) for lvl in levels)
    out: dict[str, Any] = {"id": item["id"], "label": item.get("label", item["id"]), "checks": []}
    for what, ours, printed in (
        ("proportional odds ratio", po.estimate, pub["estimate"]),
        ("POR lower", po.ci_low, pub["ci"][0]),
        ("POR upper", po.ci_high, pub["ci"][1]),
        (
            "treated resolution percent",
            100 * int(item["treated"][levels[0]]) / n_t,
            item["percent_resolution"]["treated"],
        ),
        (
            "control resolution percent",
            100 * int(item["control"][levels[0]]) / n_c,
            item["percent_resolution"]["control"],
        ),
    ):
        dec = 2 if "POR" in what or "odds" in what else 1
        out["checks"].append(
            {
                "what": what,
                "ours": ours,
                "printed": float(printed),
                "match": matches(ours, float(printed), dec),
            }
        )
    dec = int(item["p_value"]["decimals"])
    p_vals = {"ordinal": po.p_value, "mann_whitney": mw.p_value}
    out["p_values"] = p_vals
    out["p_printed"] = item["p_value"]["printed"]
    out["p_matching_tests"] = [
        k for k, v in p_vals.items() if v is not None and matches(v, float(item["p_value"]["value"]), dec)
    ]
    out["p_expected_test"] = item.get("matching_test")
    return out


def reproduce(pub_id: str) -> dict[str, Any]:
    """Every recomputable number of one published record, ours beside the printed one."""
    rec = load_published(pub_id)
    out: dict[str, Any] = {
        "id": pub_id,
        "trial": rec.get("trial", pub_id),
        "citation": " ".join(str(rec["citation"]).split()),
        "items": [],
    }
    for item in rec.get("binary", []):
        out["items"].append(reproduce_binary(item))
    for item in rec.get("ordinal", []):
        out["items"].append(reproduce_ordinal(item))
    for item in rec.get("proportions", []):
        ours = 100 * int(item["events"]) / int(item["n"])
        out["items"].append(
            {
                "id": item["id"],
                "label": item.get("label", item["id"]),
                "checks": [
                    {
                        "what": "percent",
                        "ours": ours,
                        "printed": float(item["percent"]),
                        "match": matches(ours, float(item["percent"]), 1),
                    }
                ],
                "note": item.get("note"),
            }
        )
    flow_n = _treated_flow_n(rec)
    for item in rec.get("percentages", []):
        candidates = {
            arm: candidate_fractions(float(item[arm]), flow_n[arm]) if arm in flow_n else []
            for arm in ("treated", "control")
        }
        out["items"].append(
            {
                "id": item["id"],
                "label": item.get("label", item["id"].replace("_", " ")),
                "checks": [],
                "printed": {arm: item[arm] for arm in ("treated", "control")},
                "unit": item.get("unit", "percent"),
                "candidates": {arm: [f"{x}/{n}" for x, n in c] for arm, c in candidates.items()},
                "note": item.get("note")
                or (
                    "no counts published; x/n below the treated numbers that round to the printed value"
                    if any(candidates.values())
                    else "no x/n up to the treated numbers rounds to it (probably a Kaplan-Meier estimate)"
                ),
            }
        )
    for item in rec.get("means", []):
        out["items"].append(
            {
                "id": item["id"],
                "label": item.get("label", item["id"].replace("_", " ")),
                "checks": [],
                "printed": {arm: item[arm] for arm in ("treated", "control")},
                "unit": item.get("unit"),
                "note": item.get("note") or "means only (no SD or n published): nothing to recompute",
            }
        )
    for item in rec.get("hazard_ratios", []):
        out["items"].append(
            {
                "id": item["id"],
                "label": item.get("label", item["id"].replace("_", " ")),
                "checks": [],
                "printed": {"hazard ratio": f"{item['estimate']} ({item['ci'][0]} to {item['ci'][1]})"},
                "note": item.get("note"),
            }
        )
    for item in rec.get("results", []):
        out["items"].append(
            {
                "id": item["measure"],
                "label": item["measure"].replace("_", " "),
                "checks": [],
                "printed": {"result": item.get("direction"), "P": item.get("p_value")},
                "note": "qualitative result only: per-arm values are not published",
            }
        )
    if "conclusion" in rec:
        out["conclusion"] = rec["conclusion"]
    return dict(stats._clean(out))


def _treated_flow_n(rec: dict[str, Any]) -> dict[str, int]:
    """Per-arm numbers from the record's flow (treated, else randomized), for denominators."""
    flow = rec.get("flow", {})
    for key in ("treated", "randomized", "analysed"):
        arms = flow.get(key)
        if isinstance(arms, dict) and isinstance(arms.get("treated"), int):
            return {arm: int(arms[arm]) for arm in ("treated", "control") if isinstance(arms.get(arm), int)}
    return {}


def candidate_fractions(percent: float, n_max: int, decimals: int = 1) -> list[tuple[int, int]]:
    """All x/n with n <= n_max that round to ``percent`` (to recover unpublished denominators)."""
    out = []
    for n in range(1, n_max + 1):
        for x in range(n + 1):
            if matches(100 * x / n, percent, decimals):
                out.append((x, n))
    return out
