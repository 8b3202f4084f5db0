"""The bedside patient timeline: SOFA (components and total, the scores package's functions as
``POST /score`` calls them), ferritin, mHLA-DR and lactate over time with the protocol's thresholds
(read from the protocol file), the endotype at each ferritin or mHLA-DR measurement (the protocol's
own classification, as ``POST /classify``), and study-drug periods shaded; drawn by matplotlib as
an SVG whose ``<title>`` elements give the hover text (value, unit, time, source) without script.

The SVG keeps to the pages' Content-Security-Policy (``style-src 'self'``): matplotlib's inline
``style`` attributes and its ``<style>`` element become SVG presentation attributes."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from matplotlib import dates as mdates
from matplotlib.figure import Figure

from immunostrat.api.clinical import canonical_observations
from immunostrat.concepts import load_concepts
from immunostrat.protocols import Protocol
from immunostrat.scores import SOFA_COMPONENTS, SOFA_INPUTS, score_windows, windows_at
from immunostrat.trial import eligibility

SOFA_WINDOW_HOURS = 24.0
"""SOFA at each time: the worst value per organ system in the 24 h up to it (POST /score's default)."""
MAX_TIME_POINTS = 300
"""Distinct observation times the timeline scores and classifies (the latest are kept)."""
PANEL_CONCEPTS = ("ferritin", "mhla_dr", "lactate")
LABELS = {"ferritin": "Ferritin", "mhla_dr": "mHLA-DR", "lactate": "Lactate"}
COLORS = {"ferritin": "#8e3b00", "mhla_dr": "#0b5cad", "lactate": "#5a2d82", "sofa_total": "#1b1f24"}
COMPONENT_COLORS = ("#1f77b4", "#2ca02c", "#b8860b", "#d62728", "#7f3fbf", "#8c564b")
DRUG_COLOR = "#f2c14e"
ENDOTYPE_COLOR = "#a4161a"
_RC_FONT = {"family": "DejaVu Sans", "size": 9}


@dataclass(frozen=True)
class Point:
    time: datetime
    concept: str
    value: float
    unit: str
    source: str
    entered: str = ""
    """The value as it was given (``2.1 mg/L``) when it differs from the canonical one."""


@dataclass(frozen=True)
class DrugPeriod:
    drug: str
    start: datetime
    end: datetime
    text: str
    source: str


@dataclass
class Timeline:
    points: list[Point] = field(default_factory=list)
    sofa: list[dict[str, Any]] = field(default_factory=list)
    endotypes: list[tuple[datetime, str]] = field(default_factory=list)
    """(time, endotype) where the endotype changes (the first one included)."""
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    drugs: list[DrugPeriod] = field(default_factory=list)
    svg: str = ""


def when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def protocol_thresholds(protocol: Protocol, concept: str) -> list[dict[str, Any]]:
    """The protocol's cut-offs for ``concept`` (from its rules, never restated), one per value."""
    out: dict[float, dict[str, Any]] = {}
    for rule in protocol.rules:
        for c in rule.all:
            if c.concept == concept:
                label = LABELS.get(concept, concept)
                entry = out.setdefault(
                    c.threshold, {"concept": concept, "label": label, "value": c.threshold, "unit": c.unit}
                )
                entry.setdefault("rules", []).append(f"{rule.endotype} if {c.op} {c.threshold:g}")
    for entry in out.values():
        entry["text"] = (
            f"{protocol.id} threshold: {concept} {entry['value']:g} {entry['unit']} "
            f"({'; '.join(entry['rules'])})"
        )
    return list(out.values())


def build(
    frame: pl.DataFrame,
    patient: Mapping[str, Any],
    sources: Sequence[str],
    entered: Sequence[str],
    protocol: Protocol,
    drugs: Sequence[DrugPeriod],
) -> Timeline:
    """Everything the timeline shows, from the canonical frame (``source_row`` = 1-based index into
    ``sources`` and ``entered``)."""
    tl = Timeline(drugs=list(drugs))
    units = {c: load_concepts()[c].canonical_unit for c in PANEL_CONCEPTS}
    for r in frame.filter(pl.col("concept").is_in(PANEL_CONCEPTS)).sort("time").iter_rows(named=True):
        i = int(r["source_row"]) - 1
        given = entered[i] if 0 <= i < len(entered) else ""
        shown = f"{r['value']:g} {units[r['concept']]}"
        tl.points.append(
            Point(
                r["time"],
                r["concept"],
                float(r["value"]),
                units[r["concept"]],
                sources[i] if 0 <= i < len(sources) else "?",
                given if given and given.replace(" ", "") != shown.replace(" ", "") else "",
            )
        )
    for concept in ("ferritin", "mhla_dr"):
        if any(p.concept == concept for p in tl.points):
            tl.thresholds += protocol_thresholds(protocol, concept)
    tl.sofa = _sofa(frame, sources)
    tl.endotypes = _endotypes(frame, patient, protocol)
    return tl


def _sofa(frame: pl.DataFrame, sources: Sequence[str]) -> list[dict[str, Any]]:
    """SOFA at each time an input was measured: the 24 h window ending then (as POST /score)."""
    inputs = set(SOFA_INPUTS) | {"pao2", "fio2", "map", "norepinephrine_rate", "epinephrine_rate"}
    inputs |= {"dopamine_rate", "dobutamine_rate", "urine_output", "urine_output_24h", "creatinine"}
    relevant = frame.filter(pl.col("concept").is_in(sorted(inputs)))
    times = sorted(set(relevant["time"].to_list()))[-MAX_TIME_POINTS:]
    if not times:
        return []
    windows = pl.concat([windows_at(frame, t, SOFA_WINDOW_HOURS) for t in times])
    scored = score_windows(frame, windows, "sofa")
    out = []
    for row, t in zip(scored.sort("window_end").iter_rows(named=True), times, strict=True):
        missing = [m for m in str(row.get("sofa_missing_components") or "").split(",") if m]
        components = {c: None if c in missing else row.get(f"sofa_{c}") for c in SOFA_COMPONENTS}
        if all(v is None for v in components.values()):
            continue
        start = t - timedelta(hours=SOFA_WINDOW_HOURS)
        used = relevant.filter((pl.col("time") > start) & (pl.col("time") <= t))["source_row"].to_list()
        names = list(dict.fromkeys(sources[int(i) - 1] for i in used if 0 < int(i) <= len(sources)))
        out.append(
            {
                "time": t,
                "total": row.get("sofa_total"),
                "components": components,
                "missing": missing,
                "sources": names[:6] + ([f"{len(names) - 6} more"] if len(names) > 6 else []),
            }
        )
    return out


def _endotypes(
    frame: pl.DataFrame, patient: Mapping[str, Any], protocol: Protocol
) -> list[tuple[datetime, str]]:
    """The protocol's endotype at each time a deciding concept was measured; kept where it changes."""
    deciding = frame.filter(pl.col("concept").is_in(list(protocol.requires)))
    times = sorted(set(deciding["time"].to_list()))[-MAX_TIME_POINTS:]
    changes: list[tuple[datetime, str]] = []
    for t in times:
        upto = frame.filter(pl.col("time") <= t)
        c = eligibility.classify(protocol.id, patient, canonical_observations(upto), t)
        if not changes or changes[-1][1] != c.endotype:
            changes.append((t, c.endotype))
    return changes


# ------------------------------------------------------------------------------------------ drawing


def render(tl: Timeline, labels: Mapping[str, str] = LABELS) -> str:
    """The timeline as an inline SVG string (empty when there is nothing over time to draw)."""
    panels: list[str] = []
    if tl.sofa:
        panels.append("sofa")
    panels += [c for c in PANEL_CONCEPTS if any(p.concept == c for p in tl.points)]
    if not panels:
        return ""
    titles: list[tuple[str, str | list[str]]] = []
    height = 1.0 + 1.75 * len(panels)
    fig = Figure(figsize=(9.5, height))
    fig.subplots_adjust(left=0.09, right=0.87, top=1 - 0.35 / height, bottom=0.55 / height, hspace=0.28)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for n, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.tick_params(labelsize=8)
        if panel == "sofa":
            _draw_sofa(ax, tl, titles)
        else:
            _draw_concept(ax, tl, panel, labels.get(panel, panel), titles)
        for k, d in enumerate(tl.drugs):
            gid = f"tl-drug-{k}" if n == 0 else None
            ax.axvspan(d.start, d.end, color=DRUG_COLOR, alpha=0.35, linewidth=0, gid=gid, zorder=0)
            if gid:
                titles.append((gid, f"{d.text}: {when(d.start)} to {when(d.end)}; source: {d.source}"))
        for k, (t, endotype) in enumerate(tl.endotypes):
            gid = f"tl-endotype-{k}" if n == 0 else None
            ax.axvline(t, color=ENDOTYPE_COLOR, linestyle="--", linewidth=1.0, gid=gid)
            if gid:
                titles.append((gid, f"endotype {endotype} from {when(t)} (the protocol at each measurement)"))
    top = axes[0]
    for t, endotype in tl.endotypes:
        top.annotate(
            endotype,
            xy=(mdates.date2num(t), 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=8,
            color=ENDOTYPE_COLOR,
            rotation=0,
            va="bottom",
        )
    for d in tl.drugs:
        axes[-1].annotate(
            d.drug.replace("_", " "),
            xy=(mdates.date2num(d.start), 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=8,
            color="#5c4400",
        )
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("time (UTC)", fontsize=8)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return _csp_safe(buf.getvalue(), titles)


def _draw_concept(
    ax: Any, tl: Timeline, concept: str, label: str, titles: list[tuple[str, str | list[str]]]
) -> None:
    pts = [p for p in tl.points if p.concept == concept]
    color = COLORS.get(concept, "#333333")
    gid = f"tl-{concept}"  # one line with markers; each marker gets its own title (see _csp_safe)
    ax.plot(
        [p.time for p in pts],
        [p.value for p in pts],
        color=color,
        linewidth=1.2,
        marker="o",
        markersize=5,
        gid=gid,
    )
    texts = []
    for p in pts:
        given = f" (entered {p.entered})" if p.entered else ""
        texts.append(f"{label}: {p.value:.4g} {p.unit}{given} at {when(p.time)}; source: {p.source}")
    titles.append((gid, texts))
    unit = pts[0].unit if pts else ""
    ax.set_ylabel(f"{label}\n({unit})", fontsize=8)
    for k, th in enumerate(t for t in tl.thresholds if t["concept"] == concept):
        gid = f"tl-threshold-{concept}-{k}"
        ax.axhline(th["value"], color="#444444", linestyle=":", linewidth=1.2, gid=gid)
        ax.annotate(
            f"{th['value']:g} {th['unit']}",
            xy=(0.0, th["value"]),
            xycoords=("axes fraction", "data"),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=7,
            color="#333333",
        )
        titles.append((gid, th["text"]))
    values = [p.value for p in pts] + [t["value"] for t in tl.thresholds if t["concept"] == concept]
    if values:
        ax.set_ylim(0, max(values) * 1.15 or 1)


def _draw_sofa(ax: Any, tl: Timeline, titles: list[tuple[str, str | list[str]]]) -> None:
    times = [s["time"] for s in tl.sofa]
    for i, c in enumerate(SOFA_COMPONENTS):
        ys = [s["components"][c] for s in tl.sofa]
        if all(y is None for y in ys):
            continue
        ax.plot(
            times,
            [float("nan") if y is None else y for y in ys],
            color=COMPONENT_COLORS[i],
            linewidth=0.8,
            marker=".",
            markersize=4,
            label=c,
        )
    totals = [s["total"] for s in tl.sofa]
    ax.plot(
        times,
        totals,
        color=COLORS["sofa_total"],
        linewidth=1.6,
        marker="s",
        markersize=5,
        label="total",
        gid="tl-sofa",
    )
    texts = []
    for s in tl.sofa:
        parts = ", ".join(f"{c} {v}" for c, v in s["components"].items() if v is not None)
        missing = f"; not measured: {', '.join(s['missing'])}" if s["missing"] else ""
        texts.append(
            f"SOFA total {s['total']} points at {when(s['time'])} (worst values in the "
            f"{SOFA_WINDOW_HOURS:g} h before: {parts}{missing}); source: {', '.join(s['sources'])}"
        )
    titles.append(("tl-sofa", texts))
    ax.set_ylabel("SOFA\n(points)", fontsize=8)
    ax.set_ylim(-0.5, max(4.5, max(t or 0 for t in totals) + 1.5))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.02), frameon=False, handlelength=1.2)


_USE = re.compile(r"<use [^>]*/>")
_STYLE_ELEMENT = re.compile(r"<style[^>]*>.*?</style>", re.S)
_STYLE_ATTR = re.compile(r'style="([^"]*)"')
_FONT = re.compile(
    r"^(?:(?P<style>italic|oblique|normal)\s+)?(?:(?P<weight>\d{3}|bold)\s+)?(?P<size>[\d.]+px)\s+(?P<family>.+)$"
)


def _attributes(style: str) -> str:
    out = []
    for decl in style.split(";"):
        if ":" not in decl:
            continue
        name, value = (s.strip() for s in decl.split(":", 1))
        if name == "font":
            m = _FONT.match(value)
            if m is None:
                continue
            out.append(f'font-size="{m["size"]}"')
            out.append(f'font-family="{html.escape(m["family"].replace(chr(39), ""))}"')
            if m["weight"]:
                out.append(f'font-weight="{m["weight"]}"')
            if m["style"]:
                out.append(f'font-style="{m["style"]}"')
        else:
            out.append(f'{name}="{html.escape(value)}"')
    return " ".join(out)


def _titled(body: str, texts: Sequence[str]) -> str:
    """Each marker (``<use>``, in data order) wrapped in a group with its own title."""
    it = iter(texts)
    return _USE.sub(
        lambda m: f'<g class="point"><title>{html.escape(next(it))}</title>{m.group(0)}</g>', body
    )


def _csp_safe(svg: str, titles: Sequence[tuple[str, str | list[str]]]) -> str:
    """matplotlib's SVG without inline style (presentation attributes instead), with a ``<title>``
    in each marked group (the hover text): one for the group, or one per marker of a line."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = _STYLE_ELEMENT.sub("", svg)
    svg = _STYLE_ATTR.sub(lambda m: _attributes(m.group(1)), svg)
    svg = svg.replace(
        "<svg ",
        '<svg stroke-linejoin="round" stroke-linecap="butt" role="img" aria-labelledby="timeline-caption" ',
        1,
    )
    for gid, text in titles:
        tag = f'<g id="{gid}">'
        start = svg.find(tag)
        if start < 0:
            continue
        if isinstance(text, str):
            svg = svg[:start] + f"{tag}<title>{html.escape(text)}</title>" + svg[start + len(tag) :]
            continue
        body_start = start + len(tag)
        end = svg.find('<g id="', body_start)
        end = len(svg) if end < 0 else end
        body = svg[body_start:end]
        markers = _USE.findall(body)
        if len(markers) != len(text):  # markers dropped (outside the figure): one title for the line
            svg = svg[:start] + f"{tag}<title>{html.escape('; '.join(text))}</title>" + svg[body_start:]
            continue
        body = _titled(body, text)
        svg = svg[:body_start] + body + svg[end:]
    return svg
