"""Cohort summary (counts, missing concepts, 28-day mortality by endotype) and its figures."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.cohort.report_data import (
    TRAJECTORY_HOURS,
    TrajectoryPoint,
    format_mortality,
    mortality_by_endotype,
    sofa_trajectories,
)
from immunostrat.protocols import Protocol
from immunostrat.scores import load_definition
from immunostrat.scores.sofa import sofa_inputs
from immunostrat.sources import ConceptStatus

MORTALITY_DAYS = 28


def _stay_endotypes(endotypes: pl.DataFrame) -> pl.DataFrame:
    """Per stay: the first known (non-unknown) endotype and when it was first seen."""
    known = endotypes.filter(pl.col("endotype") != "unknown").sort("stay_id", "time")
    return known.group_by("stay_id", maintain_order=True).agg(
        pl.col("endotype").first().alias("first_endotype"),
        pl.col("time").first().alias("first_endotype_time"),
    )


def summarise(
    *,
    stays: pl.DataFrame,
    hourly: pl.DataFrame,
    sepsis3: pl.DataFrame,
    endotypes: pl.DataFrame,
    concept_rows: dict[str, int],
    report: list[ConceptStatus],
    notes: list[str],
    source: str,
    engine: str,
    protocol: Protocol,
    rules: dict[str, Any] | None = None,
    dropped: pl.DataFrame | None = None,
    attrition: list[dict[str, Any]] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The stays table with per-stay outcomes, and the summary dict (JSON-serialisable)."""
    hours = hourly.group_by("stay_id").agg(pl.len().cast(pl.Int64).alias("grid_hours"))
    first = _stay_endotypes(endotypes)
    septic = sepsis3.select("stay_id", "sepsis3", "sepsis_time")
    horizon = timedelta(days=MORTALITY_DAYS)
    stays_out = (
        stays.join(hours, on="stay_id", how="left")
        .join(septic, on="stay_id", how="left")
        .join(first, on="stay_id", how="left")
        .with_columns(
            pl.col("grid_hours").fill_null(0),
            pl.col("sepsis3").fill_null(False),
            pl.col("first_endotype").fill_null("unknown"),
            (
                pl.col("death_time").is_not_null() & (pl.col("death_time") - pl.col("icu_intime") <= horizon)
            ).alias("death_28d"),
        )
        .sort("stay_id")
    )
    ever = (
        endotypes.select("stay_id", "endotype")
        .unique()
        .group_by("endotype")
        .agg(pl.len().alias("n"))
        .sort("endotype")
    )
    first_counts = stays_out.group_by("first_endotype").agg(pl.len().alias("n")).sort("first_endotype")
    mortality = (
        stays_out.group_by("first_endotype")
        .agg(pl.len().alias("stays"), pl.col("death_28d").sum().alias("deaths"))
        .with_columns((pl.col("deaths") / pl.col("stays")).round(4).alias("mortality"))
        .sort("first_endotype")
    )
    by_status = {c.concept: c for c in report}
    variant = str((rules or {}).get("sofa") or "sofa")
    options = {str(k): str(v) for k, v in dict((rules or {}).get("sofa_options") or {}).items()}
    wanted = [*sofa_input_sources(variant, options), "antibiotic", "culture", *protocol.requires]
    missing = []
    for concept in dict.fromkeys(wanted):
        rows = int(concept_rows.get(concept, 0))
        status = by_status.get(concept)
        if rows == 0 or (status is not None and status.status != "present"):
            missing.append(
                {
                    "concept": concept,
                    "rows": rows,
                    "status": status.status if status is not None else "absent",
                    "detail": status.detail if status is not None else "no observations in this source",
                }
            )
    # a source with no death and no discharge recorded for any stay has no follow-up: mortality is
    # not in it (PhysioNet 2019), which is not the same as "no deaths"
    mortality_known = bool(
        stays_out.height == 0
        or stays_out["death_time"].is_not_null().any()
        or stays_out["hospital_discharge_time"].is_not_null().any()
    )
    septic_n = int(stays_out["sepsis3"].sum())
    # source level: the source holds the events the suspicion rule needs (per stay: sepsis3_reason)
    source_level = sepsis3.filter(~pl.col("sepsis3_reason").str.contains("^not assessable: source has no"))
    assessable = bool(source_level.height == sepsis3.height)
    reasons = sepsis3.group_by("sepsis3_reason").agg(pl.len().alias("n")).sort("sepsis3_reason")
    summary: dict[str, Any] = {
        "source": source,
        "engine": engine,
        "protocol": {"id": protocol.id, "version": protocol.version},
        "sofa_variant": str((rules or {}).get("sofa") or load_definition("sofa")["id"]),
        "sofa_options": dict((rules or {}).get("sofa_options") or {}),
        "sepsis3_variant": load_definition("sepsis3")["id"],
        "stays": stays_out.height,
        "stays_with_hourly_sofa": int((stays_out["grid_hours"] > 0).sum()),
        "patient_hours": hourly.height,
        "septic_stays": septic_n,
        "sepsis3_assessable": assessable,
        "sepsis3_not_assessable_stays": int((~sepsis3["sepsis3_assessable"]).sum()) if sepsis3.height else 0,
        "sepsis3_reasons": dict(
            zip(reasons["sepsis3_reason"].to_list(), reasons["n"].to_list(), strict=True)
        ),
        "rules": dict(rules or {}),
        "attrition": list(
            attrition or [{"step": "all stays", "rule": "", "stays": stays.height, "excluded": 0}]
        ),
        "sepsis3_note": "" if assessable else str(sepsis3["sepsis3_reason"][0]) if sepsis3.height else "",
        "endotype_stays_ever": dict(zip(ever["endotype"].to_list(), ever["n"].to_list(), strict=True)),
        "endotype_first_known": dict(
            zip(first_counts["first_endotype"].to_list(), first_counts["n"].to_list(), strict=True)
        ),
        "missing_concepts": missing,
        "dropped_rows": _dropped_rows(dropped),
        "mortality_28d_known": mortality_known,
        "mortality_28d_by_endotype": {}
        if not mortality_known
        else {
            row["first_endotype"]: {
                "stays": int(row["stays"]),
                "deaths": int(row["deaths"]),
                "mortality": None if row["mortality"] is None else float(row["mortality"]),
            }
            for row in mortality.iter_rows(named=True)
        },
        "notes": list(notes),
    }
    return stays_out, summary


def _dropped_rows(dropped: pl.DataFrame | None) -> list[dict[str, Any]]:
    """Rows read but not kept, by concept, table and reason (the adapter's ``tables['dropped']``)."""
    if dropped is None or dropped.height == 0:
        return []
    grouped = (
        dropped.group_by("concept", "table", "reason")
        .agg(pl.col("rows").sum().cast(pl.Int64))
        .sort(["concept", "rows", "table", "reason"], descending=[False, True, False, False])
    )
    return [{"concept": c, "table": t, "reason": r, "rows": int(n)} for c, t, r, n in grouped.iter_rows()]


# Concepts the SOFA inputs come from (urine_output feeds urine_output_24h; pao2 + fio2 the ratio).
def sofa_input_sources(variant: str = "sofa", options: dict[str, str] | None = None) -> tuple[str, ...]:
    """The source concepts the ``variant`` SOFA definition reads (derived inputs expanded).

    Ratios come from their two concepts (``pao2_fio2_ratio`` from pao2 + fio2, ``spo2_fio2_ratio``
    from spo2 + fio2), every urine window (``urine_output_24h``, ``urine_ml_kg_h_6h`` ...) from
    ``urine_output``; ``weight_kg`` is a stay attribute, not an observed concept, and is left out.
    """
    names: list[str] = []
    for name in sofa_inputs(variant, options):
        if name == "pao2_fio2_ratio":
            names += ["pao2", "fio2"]
        elif name == "spo2_fio2_ratio":
            names += ["spo2", "fio2"]
        elif name.startswith(("urine_output_", "urine_ml_kg_h_")):
            names.append("urine_output")
        elif name != "weight_kg":
            names.append(name)
    return tuple(dict.fromkeys(names))


SOFA_INPUTS_SOURCES = sofa_input_sources("sofa")


@dataclass
class CohortSummary:
    summary: dict[str, Any]
    figures: list[Path] = field(default_factory=list)

    def text(self) -> str:
        return format_summary(self.summary)


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text rendering of the summary (for the CLI)."""
    lines = [
        f"source {summary['source']} on {summary['engine']}, protocol {summary['protocol']['id']} "
        f"{summary['protocol']['version']}",
        f"stays: {summary['stays']} ({summary['patient_hours']} patient-hours of SOFA, "
        f"{summary.get('sofa_variant', 'sofa-1996')})",
        f"septic stays (Sepsis-3): {summary['septic_stays']}"
        + ("" if summary["sepsis3_assessable"] else f" - {summary['sepsis3_note']}"),
        "endotype (first known per stay): "
        + ", ".join(f"{k} {v}" for k, v in summary["endotype_first_known"].items()),
        "endotype (ever, stays): " + ", ".join(f"{k} {v}" for k, v in summary["endotype_stays_ever"].items()),
        format_mortality(mortality_by_endotype(summary)),
    ]
    rules = summary.get("rules") or {}
    if rules:
        lines.append(
            f"rules: suspected infection {rules.get('suspected_infection')}, "
            f"SOFA baseline {rules.get('sofa_baseline')}, SOFA {rules.get('sofa', 'sofa-1996')}"
            + (
                " (" + ", ".join(f"{k} {v}" for k, v in (rules.get("sofa_options") or {}).items()) + ")"
                if rules.get("sofa_options")
                else ""
            )
        )
    attrition = summary.get("attrition") or []
    if len(attrition) > 1:
        lines.append(
            "attrition: "
            + " -> ".join(
                f"{a['step']} {a['stays']}" + (f" ({a['rule']})" if a["rule"] else "") for a in attrition
            )
        )
    not_assessable = summary.get("sepsis3_not_assessable_stays", 0)
    if not_assessable:
        lines.append(f"Sepsis-3 not assessable in {not_assessable} stays:")
        lines.extend(
            f"  {n} {reason}"
            for reason, n in (summary.get("sepsis3_reasons") or {}).items()
            if reason.startswith("not assessable")
        )
    if summary["missing_concepts"]:
        lines.append(
            "missing concepts: "
            + ", ".join(f"{m['concept']} ({m['detail'] or m['status']})" for m in summary["missing_concepts"])
        )
    dropped = summary.get("dropped_rows") or []
    if dropped:
        lines.append(f"rows not kept ({sum(d['rows'] for d in dropped)}), by concept and reason:")
        lines.extend(f"  {d['concept']}: {d['rows']} {d['reason']} ({d['table']})" for d in dropped)
    return "\n".join(lines)


def cohort_summary(output_dir: str | Path) -> CohortSummary:
    """Read a cohort folder written by ``build_cohort`` and write figures next to the tables:
    ``endotype_prevalence.png``, ``sofa_trajectories.png``, ``mortality_28d.png`` and ``summary.html``
    (the three as interactive plotly charts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    folder = Path(output_dir)
    summary: dict[str, Any] = json.loads((folder / "summary.json").read_text(encoding="utf-8"))

    ever = summary["endotype_stays_ever"]
    first_known = summary["endotype_first_known"]
    names = sorted(set(ever) | set(first_known))
    # the same numbers as the cohort pages (report_data): hourly means with 95% CI and n stays
    points = sofa_trajectories(folder, bin="hour", hours=TRAJECTORY_HOURS)
    traj: dict[str, list[TrajectoryPoint]] = {}
    for point in points:
        traj.setdefault(point.endotype, []).append(point)
    mortality = mortality_by_endotype(summary) or []
    figures: list[Path] = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, [ever.get(n, 0) for n in names], label="ever", alpha=0.6)
    ax.bar(names, [first_known.get(n, 0) for n in names], label="first known", alpha=0.6)
    ax.set_ylabel("stays")
    ax.set_title("Endotype prevalence")
    ax.legend()
    fig.tight_layout()
    figures.append(folder / "endotype_prevalence.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, part in traj.items():
        (line,) = ax.plot([p.bin for p in part], [p.mean for p in part], label=name)
        banded = [p for p in part if p.ci is not None]
        ax.fill_between(
            [p.bin for p in banded],
            [p.ci[0] for p in banded if p.ci],
            [p.ci[1] for p in banded if p.ci],
            color=line.get_color(),
            alpha=0.2,
            linewidth=0,
        )
    ax.set_xlabel("hours since ICU admission")
    ax.set_ylabel("mean SOFA (trailing 24 h), 95% CI")
    ax.set_title("SOFA trajectories by first known endotype")
    ax.legend()
    fig.tight_layout()
    figures.append(folder / "sofa_trajectories.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    mnames = [m.endotype for m in mortality]
    heights = [100 * (m.proportion or 0.0) for m in mortality]
    errors = [
        [h - 100 * (m.ci[0] if m.ci else 0.0) for h, m in zip(heights, mortality, strict=True)],
        [100 * (m.ci[1] if m.ci else 0.0) - h for h, m in zip(heights, mortality, strict=True)],
    ]
    ax.bar(mnames, heights, yerr=errors if mortality else None, capsize=4)
    for i, m in enumerate(mortality):
        ax.annotate(f"{m.deaths}/{m.stays}", (i, heights[i]), ha="center")
    ax.set_ylabel("28-day mortality (%), Wilson 95% CI")
    ax.set_title("28-day mortality by first known endotype")
    fig.tight_layout()
    figures.append(folder / "mortality_28d.png")
    fig.savefig(figures[-1], dpi=100)
    plt.close(fig)

    charts = [
        go.Figure(
            [
                go.Bar(name="ever", x=names, y=[ever.get(n, 0) for n in names]),
                go.Bar(name="first known", x=names, y=[first_known.get(n, 0) for n in names]),
            ],
            layout={"title": "Endotype prevalence (stays)"},
        ),
        go.Figure(
            [
                go.Scatter(
                    name=name,
                    x=[p.bin for p in part],
                    y=[p.mean for p in part],
                    mode="lines",
                    text=[
                        f"n {p.n}" + (f", 95% CI {p.ci[0]:.1f} to {p.ci[1]:.1f}" if p.ci else "")
                        for p in part
                    ],
                )
                for name, part in traj.items()
            ],
            layout={"title": "Mean SOFA by hour since ICU admission, by first known endotype"},
        ),
        go.Figure(
            [
                go.Bar(
                    x=mnames,
                    y=heights,
                    error_y={"type": "data", "symmetric": False, "array": errors[1], "arrayminus": errors[0]},
                    text=[f"{m.deaths}/{m.stays}" for m in mortality],
                )
            ],
            layout={"title": "28-day mortality (%) by first known endotype"},
        ),
    ]
    parts = [chart.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, chart in enumerate(charts)]
    html = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>immunostrat cohort summary</title></head><body>"
        f"<h1>Cohort summary</h1><pre>{_escape(format_summary(summary))}</pre>"
        + "".join(parts)
        + _dropped_table(summary.get("dropped_rows") or [])
        + "</body></html>"
    )
    figures.append(folder / "summary.html")
    figures[-1].write_text(html, encoding="utf-8")
    return CohortSummary(summary=summary, figures=figures)


def _dropped_table(dropped: list[dict[str, Any]]) -> str:
    """The rows the source adapter read but did not keep, as an HTML table."""
    if not dropped:
        return "<h2>Rows not kept</h2><p>none</p>"
    head = "<tr><th>concept</th><th>rows</th><th>reason</th><th>table</th></tr>"
    body = "".join(
        f"<tr><td>{_escape(d['concept'])}</td><td>{d['rows']}</td><td>{_escape(d['reason'])}</td>"
        f"<td>{_escape(d['table'])}</td></tr>"
        for d in dropped
    )
    return f"<h2>Rows not kept, by concept and reason</h2><table>{head}{body}</table>"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
