"""Figures for the trial report (matplotlib, rendered to SVG strings with text kept as text, so the
arms' names are searchable in the page and in the PDF).

Each function returns an SVG string; none writes files.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.patches import FancyBboxPatch

from immunostrat.analysis.schema import TrialExport

TREATED_COLOR = "#c0392b"
CONTROL_COLOR = "#2c6fbb"
_RC: Any = {
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "svg.hashsalt": "immunostrat",
}


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _colors(arms: list[str]) -> dict[str, str]:
    return {arms[0]: TREATED_COLOR, arms[1]: CONTROL_COLOR}


def consort_svg(consort: dict[str, Any], arms: list[str]) -> str:
    """CONSORT 2010 flow: screened -> excluded (reasons) -> randomized -> allocated per arm ->
    withdrawn / data removed -> analysed (with strata)."""
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(8.0, 7.0))
        ax.set_xlim(0, 100)
        ax.set_ylim(2, 99)
        ax.axis("off")

        def box(x: float, y: float, w: float, h: float, text: str, fc: str = "#f7f7f7") -> None:
            ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.4", fc=fc, ec="#333333", lw=0.8))
            ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8, wrap=True)

        def arrow(x1: float, y1: float, x2: float, y2: float) -> None:
            ax.annotate("", xy=(x2, y2), xytext=(x1, y1), arrowprops={"arrowstyle": "->", "lw": 0.8})

        box(22, 91, 36, 6, f"Assessed for eligibility\n(n = {consort['screened']})")
        reasons = "\n".join(
            textwrap.shorten(f"{k}: {v}", 52, placeholder="...")
            for k, v in list(consort["exclusion_reasons"].items())[:7]
        )
        excl_text = f"Excluded (n = {consort['excluded'] + consort['eligible_not_randomized']})\n" + reasons
        if consort["eligible_not_randomized"]:
            excl_text += f"\nEligible, not randomized: {consort['eligible_not_randomized']}"
        box(50, 64, 49, 22, excl_text, fc="#fdf2e9")
        arrow(40, 90.6, 40, 60.6)
        ax.plot([40, 49.6], [75, 75], color="#333333", lw=0.8)
        box(22, 54, 36, 6, f"Randomized (n = {consort['randomized']})")
        for i, arm in enumerate(arms):
            a = consort["arms"][arm]
            x = 3 if i == 0 else 53
            arrow(40, 53.6, x + 22, 45.6)
            box(x, 38, 44, 7, f"Allocated to {arm}\n(n = {a['allocated']})", fc="#eef5fb" if i else "#fbeeee")
            wr = "; ".join(f"{k}: {v}" for k, v in a["withdrawal_reasons"].items()) or "none"
            box(
                x,
                22,
                44,
                10,
                textwrap.fill(f"Withdrawn (n = {a['withdrawn']}): {wr}", 50)
                + f"\nData removed: {a['data_removed']}",
            )
            arrow(x + 22, 38, x + 22, 32.5)
            strata = ", ".join(f"{k} {v}" for k, v in sorted(a["by_stratum"].items()))
            box(
                x,
                4,
                44,
                11,
                f"Analysed, {arm} (n = {a['analysed']})\n"
                f"{consort['analysed_population']} population\n{strata}",
            )
            arrow(x + 22, 22, x + 22, 15.5)
        fig.suptitle("CONSORT flow diagram", fontsize=10)
        return _svg(fig)


def forest_svg(rows: list[dict[str, Any]], arms: list[str], title: str, favourable: str | None = None) -> str:
    """Forest plot: one row per (endpoint, subgroup) with estimate and CI. ``rows`` items have
    label, estimate, ci_low, ci_high, measure, counts (text) and ``log`` (ratio scale)."""
    with plt.rc_context(_RC):
        n = len(rows)
        fig, ax = plt.subplots(figsize=(8.0, 0.42 * n + 1.6))
        ratio = all(r.get("log", False) for r in rows)
        null = 1.0 if ratio else 0.0
        for i, r in enumerate(rows):
            y = n - 1 - i
            # an infinite limit arrives as None: no bar can be drawn for it
            if r.get("estimate") is None or r.get("ci_low") is None or r.get("ci_high") is None:
                ax.text(null, y, "not estimable", ha="center", va="center", fontsize=7, color="#777777")
                continue
            ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="#222222", lw=1.1)
            ax.plot(
                r["estimate"],
                y,
                marker="s" if r.get("overall") else "o",
                color="#222222",
                ms=6 if r.get("overall") else 4.5,
            )
        ax.axvline(null, color="#888888", lw=0.8, ls="--")
        ax.set_yticks(range(n))
        ax.set_yticklabels([r["label"] for r in reversed(rows)])
        for i, r in enumerate(rows):
            y = n - 1 - i
            if r.get("estimate") is not None and r.get("ci_low") is not None and r.get("ci_high") is not None:
                txt = f"{r['estimate']:.2f} ({r['ci_low']:.2f} to {r['ci_high']:.2f})"
                ax.text(
                    1.02,
                    y,
                    txt + ("  " + r["counts"] if r.get("counts") else ""),
                    transform=ax.get_yaxis_transform(),
                    va="center",
                    fontsize=7,
                )
        if ratio:
            ax.set_xscale("log")
            lo = min([r["ci_low"] for r in rows if r.get("ci_low")] + [0.5])
            hi = max([r["ci_high"] for r in rows if r.get("ci_high")] + [2.0])
            ax.set_xlim(max(lo / 1.3, 1e-3), min(hi * 1.3, 1e3))
        measure = rows[0].get("measure", "estimate") if rows else "estimate"
        if favourable in ("higher", "lower"):
            left, right = (arms[0], arms[1]) if favourable == "lower" else (arms[1], arms[0])
            hint = f"<- favours {left}    favours {right} ->"
        else:
            hint = "<- lower    higher ->"
        ax.set_xlabel(f"{measure} ({arms[0]} vs {arms[1]})\n{hint}")
        ax.set_title(title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)


def km_svg(curves: list[dict[str, Any]], arms: list[str], title: str, risk_times: list[int]) -> str:
    """Kaplan-Meier curves by arm with 95% bands and a numbers-at-risk table."""
    with plt.rc_context(_RC):
        fig, (ax, tab) = plt.subplots(2, 1, figsize=(7.5, 5.4), height_ratios=[4, 1.1], sharex=True)
        colors = _colors(arms)
        by = {c["group"]: c for c in curves}
        for arm in arms:
            c = by.get(arm)
            if c is None:
                continue
            ax.step(
                c["time"],
                c["survival"],
                where="post",
                color=colors[arm],
                label=f"{arm} (n = {c['n']}, deaths {c['events']})",
            )
            ax.fill_between(c["time"], c["ci_low"], c["ci_high"], step="post", color=colors[arm], alpha=0.12)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("Survival probability")
        ax.legend(loc="lower left", frameon=False)
        ax.set_title(title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        tab.axis("off")
        tab.set_ylim(-0.5, len(arms))
        for j, arm in enumerate(arms):
            c = by.get(arm)
            if c is None:
                continue
            tab.text(
                -0.01,
                len(arms) - 1 - j,
                arm,
                transform=tab.get_yaxis_transform(),
                ha="right",
                va="center",
                color=colors[arm],
                fontsize=8,
            )
            for t in risk_times:
                tab.text(
                    t,
                    len(arms) - 1 - j,
                    str(c["at_risk"].get(str(t), c["at_risk"].get(t, ""))),
                    ha="center",
                    va="center",
                    fontsize=8,
                )
        tab.text(
            -0.01,
            len(arms) - 0.35,
            "Number at risk",
            transform=tab.get_yaxis_transform(),
            ha="right",
            fontsize=8,
            weight="bold",
        )
        ax.set_xlabel("Study day")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xticks(risk_times)
        return _svg(fig)


def trajectory_svg(
    export: TrialExport,
    variable: str,
    days: list[int],
    arms: list[str],
    label: str,
    population_flag: str = "itt",
    log: bool = False,
) -> str:
    """Mean (SOFA) or geometric mean (``log``) with 95% CI by study day and arm."""
    p = export.participants.filter(pl.col(population_flag).fill_null(False)).select("participant_id", "arm")
    d = (
        export.daily_assessments.filter(pl.col("day").is_in(days) & pl.col(variable).is_not_null())
        .select("participant_id", "day", pl.col(variable).cast(pl.Float64).alias("v"))
        .join(p, on="participant_id", how="inner")
    )
    if log:
        d = d.filter(pl.col("v") > 0).with_columns(pl.col("v").log())
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7.0, 3.6))
        colors = _colors(arms)
        for k, arm in enumerate(arms):
            g = (
                d.filter(pl.col("arm") == arm)
                .group_by("day")
                .agg(pl.col("v").mean().alias("m"), pl.col("v").std().alias("s"), pl.len().alias("n"))
                .sort("day")
            )
            if g.height == 0:
                continue
            span = max(days) - min(days) if len(days) > 1 else 1
            x = g["day"].to_numpy() + (k - 0.5) * 0.012 * span
            m = g["m"].to_numpy()
            se = np.nan_to_num(g["s"].to_numpy() / np.sqrt(g["n"].to_numpy()))
            lo, hi = m - 1.96 * se, m + 1.96 * se
            if log:
                m, lo, hi = np.exp(m), np.exp(lo), np.exp(hi)
            ax.errorbar(
                x,
                m,
                yerr=[m - lo, hi - m],
                color=colors[arm],
                marker="o",
                ms=3.5,
                capsize=2,
                lw=1.2,
                label=arm,
            )
        ax.set_xlabel("Study day")
        ax.set_ylabel(("geometric mean " if log else "mean ") + label + " (95% CI)")
        if log:
            ax.set_yscale("log")
        ax.set_title(f"{label} by arm", fontsize=10)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _svg(fig)


def finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x)
