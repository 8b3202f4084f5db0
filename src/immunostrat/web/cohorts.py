"""The cohort pages: a researcher opens a `cohort build` output from the configured cohorts
directory (``IMMUNOSTRAT_COHORTS_DIR``, one build output per subfolder) and reads its attrition,
dropped rows, endotype prevalence, SOFA trajectories and mortality by endotype, and any stay's
hourly timeline.

No page reads a path it is given: a cohort is named by its folder name and found only among the
folders listed in the configured directory, and a stay only among that folder's stays. The numbers
come from :mod:`immunostrat.cohort.report_data`, the same functions ``immunostrat cohort summary``
prints and plots; the plots are matplotlib SVG inline in the page (hover titles, no script) with
the same numbers in a table beside each.
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from immunostrat.api.auth import confirm_current
from immunostrat.cohort import report_data
from immunostrat.cohort.report_data import (
    COHORTS_DIR_ENV,
    SOFA_COMPONENTS,
    CohortInfo,
    StayTimeline,
    TrajectoryPoint,
)
from immunostrat.web.core import PageError, add_main_page, page_router, render, signed_in, user_of
from immunostrat.web.svgplot import svg_markup

RESEARCHERS = frozenset({"researcher"})
"""Who opens cohorts: the researcher alone. A build output holds every stay of a credentialed
research database (MIMIC-IV, eICU: each reader signs the data use agreement), so the role that
stands for that reader is the one that opens it; trial roles work inside a trial and see no care
data; the clinician works at one bedside and the modeller on virtual patients, neither on a
research database's patient-level rows."""
SEARCH_LIMIT = 50
"""Stays listed per search (a cohort may hold 10^5)."""
ENDOTYPE_COLOURS = {
    "mals": "#a4161a",
    "immunoparalysis": "#0b5cad",
    "intermediate": "#8a5a00",
    "unknown": "#5f6b7a",
}
COMPONENT_COLOURS = ("#4e79a7", "#f28e2b", "#76b7b2", "#e15759", "#59a14f", "#b07aa1")

router = page_router()
add_main_page("/cohorts", "Cohorts", RESEARCHERS)


# ------------------------------------------------------------------------------------ the folders


def cohorts_dir() -> Path | None:
    """The configured cohorts directory (None when the variable is unset or names no folder)."""
    value = os.environ.get(COHORTS_DIR_ENV, "").strip()
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


def _cohort(name: str) -> CohortInfo:
    """The cohort of that folder name, found among the configured directory's build outputs only."""
    root = cohorts_dir()
    if root is None:
        raise PageError(404, "no cohorts directory is configured")
    found, _ = report_data.list_cohorts(root)
    for info in found:
        if info.name == name:
            return info
    raise PageError(404, "no such cohort")


def _stamp(when: datetime | None, seconds: bool = False) -> str:
    if when is None:
        return ""
    return when.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " UTC"


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _colour(endotype: str, index: int) -> str:
    spare = ("#2b6a4f", "#6a3d9a", "#b15928")
    return ENDOTYPE_COLOURS.get(endotype, spare[index % len(spare)])


# ------------------------------------------------------------------------------------- the plots


def _bin_label(bin: str, value: int) -> str:
    return f"day {value + 1}" if bin == "day" else f"hour {value}"


def _point_title(p: TrajectoryPoint, bin: str) -> str:
    ci = f", 95% CI {p.ci[0]:.1f} to {p.ci[1]:.1f}" if p.ci else ", no CI (one stay)"
    return f"{p.endotype}, {_bin_label(bin, p.bin)}: mean SOFA {p.mean:.1f}{ci}, n = {p.n} stays"


def trajectory_svg(points: list[TrajectoryPoint], bin: str) -> str:
    """Mean SOFA by bin and first known endotype, the 95% CI as a band; a hover title on each
    day's point, or on each hour's column (all endotypes of that hour)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot()
    titles: dict[str, str] = {}
    names = list(dict.fromkeys(p.endotype for p in points))
    x_of = (lambda b: b + 1) if bin == "day" else (lambda b: b)
    for i, name in enumerate(names):
        mine = [p for p in points if p.endotype == name]
        colour = _colour(name, i)
        xs = [x_of(p.bin) for p in mine]
        ax.plot(xs, [p.mean for p in mine], color=colour, linewidth=2, label=name)
        banded = [p for p in mine if p.ci is not None]
        if banded:
            ax.fill_between(
                [x_of(p.bin) for p in banded],
                [p.ci[0] for p in banded if p.ci],
                [p.ci[1] for p in banded if p.ci],
                color=colour,
                alpha=0.18,
                linewidth=0,
            )
        if bin == "day":  # a point per day, each with its own title
            for p in mine:
                gid = f"pt-{i}-{p.bin}"
                ax.plot(
                    [x_of(p.bin)], [p.mean], marker="o", markersize=6, color=colour, linestyle="none", gid=gid
                )
                titles[gid] = _point_title(p, bin)
    if bin != "day" and points:  # hours: one column per hour (all endotypes in its title), one artist
        bins = sorted({p.bin for p in points})
        top = max((p.ci[1] if p.ci else p.mean) for p in points) * 1.05 + 0.5
        columns = ax.bar([x_of(b) for b in bins], [top] * len(bins), width=1.0, bottom=0, color="none")
        for b, column in zip(bins, columns, strict=True):
            column.set_gid(f"col-{b}")
            titles[f"col-{b}"] = "; ".join(_point_title(p, bin) for p in points if p.bin == b)
    ax.set_xlabel("day since ICU admission" if bin == "day" else "hour since ICU admission")
    ax.set_ylabel("SOFA total (mean, 95% CI)")
    ax.set_ylim(bottom=0)
    if bin == "day":
        ax.set_xticks(range(1, 8))
    ax.grid(True, color="#d9dde3", linewidth=0.6)
    ax.set_axisbelow(True)  # grid lines under the hover columns
    if names:
        ax.legend(
            title="first known endotype",
            loc="lower left",
            bbox_to_anchor=(0, 1.01),
            ncol=len(names),
            fontsize=9,
            title_fontsize=9,
            frameon=False,
        )
    fig.tight_layout()
    return svg_markup(
        fig,
        prefix=f"traj-{bin}",
        label="SOFA trajectories by first known endotype: mean with 95% CI; "
        "the numbers are in the table below",
        titles=titles,
    )


def _missing(row: dict[str, Any]) -> set[str]:
    text = row.get("sofa_missing_components") or ""
    return {c for c in str(text).split(",") if c}


def timeline_svg(tl: StayTimeline) -> str:
    """A stay's hourly SOFA components (stacked) and total, its endotype runs in a band below, and
    Sepsis-3 onset (and suspected infection) as vertical lines; hover gives each hour's numbers."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.4))
    grid = fig.add_gridspec(2, 1, height_ratios=(5, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    band = fig.add_subplot(grid[1], sharex=ax)
    hours = [r["hour"] for r in tl.hours]
    edges = [*hours, (hours[-1] + 1) if hours else 1]
    bottom = [0.0] * len(hours)
    for i, name in enumerate(SOFA_COMPONENTS):
        values = [float(r.get(f"sofa_{name}") or 0) for r in tl.hours]
        top = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.stairs(top, edges, baseline=bottom, fill=True, color=COMPONENT_COLOURS[i], label=name, alpha=0.85)
        bottom = top
    totals = [float(r.get("sofa_total") or 0) for r in tl.hours]
    ax.stairs(totals, edges, color="#1b1f24", linewidth=1.4, label="total")
    ymax = max([*totals, 4.0]) + 1
    titles: dict[str, str] = {}
    columns = ax.bar([h + 0.5 for h in hours], [ymax] * len(hours), width=1.0, bottom=0, color="none")
    for r, column in zip(tl.hours, columns, strict=True):
        gid = f"h-{r['hour']}"
        column.set_gid(gid)
        missing = _missing(r)
        parts = ", ".join(f"{c} {'missing' if c in missing else r.get(f'sofa_{c}')}" for c in SOFA_COMPONENTS)
        titles[gid] = (
            f"hour {r['hour']} ({_stamp(r['time'])}): SOFA {r.get('sofa_total')} ({parts}); "
            f"endotype {r.get('endotype') or 'unknown'}"
        )
    marks = []
    if tl.sepsis3 is not None:
        onset = tl.hour_at(tl.sepsis3.get("sepsis_time"))
        suspicion = tl.hour_at(tl.sepsis3.get("suspicion_time"))
        if suspicion is not None and suspicion != onset:
            marks.append(("suspicion", suspicion, "#5f6b7a", ":", "suspected infection"))
        if onset is not None:
            marks.append(("onset", onset, "#a4161a", "--", "Sepsis-3 onset"))
    for key, x, colour, style, text in marks:
        band.axvline(x, color=colour, linestyle=style, linewidth=2)
        ax.axvline(x, color=colour, linestyle=style, linewidth=2, label=text, gid=f"mark-{key}-top")
        when = tl.sepsis3.get("sepsis_time" if key == "onset" else "suspicion_time") if tl.sepsis3 else None
        titles[f"mark-{key}-top"] = f"{text}: {_stamp(when)} (hour {x:.1f})"
    for i, period in enumerate(tl.periods):
        gid = f"e-{i}"
        band.broken_barh(
            [(period["first_hour"], period["hours"])],
            (0, 1),
            facecolors=_colour(period["endotype"], i),
            gid=gid,
        )
        titles[gid] = (
            f"{period['endotype']} from hour {period['first_hour']} to {period['last_hour']} "
            f"({period['hours']} h, from {_stamp(period['start'])}); "
            f"therapy {period.get('therapy') or 'none'}"
        )
    ax.set_ylim(0, ymax)
    ax.set_ylabel("SOFA (trailing 24 h)")
    ax.tick_params(labelbottom=False)
    ax.grid(True, axis="y", color="#d9dde3", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=5, fontsize=8, frameon=False)
    band.set_yticks([0.5], ["endotype"], fontsize=8)
    band.set_ylim(0, 1)
    span = max(edges[-1] - min(0, edges[0]), 1)
    for period in tl.periods:
        if period["hours"] >= 0.08 * span:
            band.text(
                period["first_hour"] + period["hours"] / 2,
                0.5,
                period["endotype"],
                ha="center",
                va="center",
                color="#ffffff",
                fontsize=9,
            )
    band.set_xlabel("hour since ICU admission (grid hour)")
    low = min([0.0, *(m[1] for m in marks)]) - 1
    band.set_xlim(low, edges[-1] + 1)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.12)
    return svg_markup(
        fig,
        prefix="stay",
        label="Hourly SOFA components and total, endotype timeline and Sepsis-3 onset; "
        "the numbers are in the tables below",
        titles=titles,
    )


@lru_cache(maxsize=32)
def _trajectories(path: str, stamp: int, bin: str) -> tuple[list[TrajectoryPoint], str]:
    """Cached per folder, summary.json time (a rebuild replaces the folder) and bin."""
    points = report_data.sofa_trajectories(path, bin=bin)  # type: ignore[arg-type]
    return points, trajectory_svg(points, bin)


# ------------------------------------------------------------------------------------- the pages


def _researcher(request: Request) -> dict[str, Any]:
    principal = signed_in(request, RESEARCHERS)
    confirm_current(request, principal)
    return user_of(request, principal)


@router.get("/cohorts")
async def cohorts_page(request: Request) -> Response:
    def work() -> dict[str, Any]:
        user = _researcher(request)
        root = cohorts_dir()
        found, unreadable = report_data.list_cohorts(root) if root is not None else ([], [])
        rows = [
            {
                "name": c.name,
                "source": c.source,
                "built": _stamp(c.built_at),
                "stays": c.stays,
                "septic": c.septic_stays,
                "sofa": c.sofa_variant,
            }
            for c in found
        ]
        return {"user": user, "configured": root is not None, "rows": rows, "unreadable": unreadable}

    return render(request, "cohort_list.html", await run_in_threadpool(work))


@router.get("/cohorts/{name}")
async def cohort_page(request: Request, name: str, bin: str = "day") -> Response:
    if bin not in report_data.BIN_HOURS:
        raise PageError(404, "no such bin: day | hour")

    def work() -> dict[str, Any]:
        user = _researcher(request)
        info = _cohort(name)
        summary = info.summary
        stamp = (info.path / "summary.json").stat().st_mtime_ns
        points, svg = _trajectories(str(info.path), stamp, bin)
        mortality = report_data.mortality_by_endotype(summary)
        dropped = summary.get("dropped_rows") or []
        return {
            "user": user,
            "info": info,
            "built": _stamp(info.built_at, seconds=True),
            "summary": summary,
            "rules": summary.get("rules") or {},
            "attrition": summary.get("attrition") or [],
            "dropped": dropped,
            "dropped_total": sum(int(d["rows"]) for d in dropped),
            "missing": summary.get("missing_concepts") or [],
            "reasons": summary.get("sepsis3_reasons") or {},
            "prevalence": [
                {
                    "endotype": p.endotype,
                    "ever": p.ever,
                    "ever_pct": _percent(p.ever / p.stays if p.stays else None),
                    "first": p.first_known,
                    "first_pct": _percent(p.first_known / p.stays if p.stays else None),
                }
                for p in report_data.endotype_prevalence(summary)
            ],
            "bin": bin,
            "trajectory_svg": svg,
            "trajectory": [
                {
                    "endotype": p.endotype,
                    "bin": _bin_label(bin, p.bin),
                    "n": p.n,
                    "mean": _number(p.mean),
                    "lo": _number(p.ci[0]) if p.ci else "",
                    "hi": _number(p.ci[1]) if p.ci else "",
                }
                for p in points
            ],
            "mortality": None
            if mortality is None
            else [
                {
                    "endotype": m.endotype,
                    "stays": m.stays,
                    "deaths": m.deaths,
                    "pct": _percent(m.proportion),
                    "lo": _percent(m.ci[0]) if m.ci else "",
                    "hi": _percent(m.ci[1]) if m.ci else "",
                }
                for m in mortality
            ],
            "stays": report_data.find_stays(info.path, "", limit=10)[0],
        }

    context = await run_in_threadpool(work)
    context["stays"] = [_stay_row(s) for s in context["stays"]]
    return render(request, "cohort_summary.html", context)


def _stay_row(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "stay_id": s["stay_id"],
        "patient_id": s.get("patient_id") or "",
        "intime": _stamp(s.get("icu_intime")),
        "hours": s.get("grid_hours"),
        "sepsis3": "yes" if s.get("sepsis3") else "no",
        "endotype": s.get("first_endotype") or "unknown",
    }


@router.get("/cohorts/{name}/stays")
async def stays_page(request: Request, name: str, q: str = "") -> Response:
    """Stays whose stay or patient id contains ``q``; htmx swaps the result table in as it is typed."""
    query = q.strip()[:64]

    def work() -> dict[str, Any]:
        user = _researcher(request)
        info = _cohort(name)
        found, total = report_data.find_stays(info.path, query, limit=SEARCH_LIMIT)
        return {
            "user": user,
            "info": info,
            "q": query,
            "stays": [_stay_row(s) for s in found],
            "total": total,
        }

    context = await run_in_threadpool(work)
    template = "cohort_stays_results.html" if request.headers.get("HX-Request") else "cohort_stays.html"
    return render(request, template, context)


@router.get("/cohorts/{name}/stays/{stay_id}")
async def stay_page(request: Request, name: str, stay_id: str) -> Response:
    def work() -> dict[str, Any]:
        user = _researcher(request)
        info = _cohort(name)
        tl = report_data.stay_timeline(info.path, stay_id[:64])
        if tl is None:
            raise PageError(404, "no such stay in this cohort")
        stay = tl.stay
        septic = tl.sepsis3 or {}
        hours = [
            {
                "hour": r["hour"],
                "time": _stamp(r["time"]),
                "components": ["" if c in _missing(r) else r.get(f"sofa_{c}") for c in SOFA_COMPONENTS],
                "total": r.get("sofa_total"),
                "missing": (r.get("sofa_missing_components") or "").replace(",", ", "),
                "endotype": r.get("endotype") or "unknown",
            }
            for r in tl.hours
        ]
        return {
            "user": user,
            "info": info,
            "stay": stay,
            "facts": [
                ("Stay", stay["stay_id"]),
                ("Patient", stay.get("patient_id") or ""),
                ("ICU admission", _stamp(stay.get("icu_intime"))),
                ("ICU discharge", _stamp(stay.get("icu_outtime"))),
                ("Age", _number(stay.get("age"), 0)),
                ("Sex", stay.get("sex") or ""),
                ("Grid hours", str(stay.get("grid_hours", ""))),
                (
                    "Sepsis-3",
                    ("yes, onset " + _stamp(septic.get("sepsis_time"))) if septic.get("sepsis3") else "no",
                ),
                ("Sepsis-3 decision", septic.get("sepsis3_reason") or ""),
                ("Suspected infection", _stamp(septic.get("suspicion_time"))),
                ("First known endotype", stay.get("first_endotype") or "unknown"),
                (
                    "Died within 28 days",
                    ("yes" if stay.get("death_28d") else "no")
                    if info.summary.get("mortality_28d_known", True)
                    else "not in the source",
                ),
            ],
            "svg": timeline_svg(tl) if tl.hours else "",
            "periods": [
                {**p, "start": _stamp(p["start"]), "therapy": p.get("therapy") or "none"} for p in tl.periods
            ],
            "components": SOFA_COMPONENTS,
            "hours": hours,
        }

    return render(request, "cohort_stay.html", await run_in_threadpool(work))
