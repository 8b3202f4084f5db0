"""Figures of the journal-grade report, drawn at print size: a 7.2-inch figure is printed at its
natural width on A4, so 8.5-9 pt text in the figure is 8.5-9 pt on paper.

- :func:`consort_svg`: the CONSORT 2010 flow with every exclusion and withdrawal reason written out
  with its count (lines wrap, never end in "..."); boxes grow with their text.
- :func:`forest_svg`: a forest plot laid out like a journal's: subgroup, events/participants per
  arm, the estimate with its CI as text, the plot between, and which side favours which arm.

Both return SVG strings with text kept as text (searchable in the page and the PDF).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch
from matplotlib.transforms import blended_transform_factory

from immunostrat.analysis.figures import _RC, _svg

WIDTH_IN = 7.2
FONT_PT = 8.5
_LINE_IN = FONT_PT * 1.32 / 72
_PAD_IN = 0.09


@dataclass
class _Box:
    x: float
    y_top: float
    w: float
    lines: list[str]
    fc: str = "#f7f7f7"
    bold_first: bool = True

    @property
    def h(self) -> float:
        return len(self.lines) * _LINE_IN + 2 * _PAD_IN

    @property
    def bottom(self) -> float:
        return self.y_top - self.h

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


def _wrap(text: str, width_in: float, indent: str = "") -> list[str]:
    """Wrap to the box width (about 0.55 em per character at this size); never shortens."""
    chars = max(12, int(width_in / (FONT_PT * 0.55 / 72)))
    return textwrap.wrap(text, chars, subsequent_indent=indent, break_long_words=True) or [""]


def _count_lines(items: dict[str, int], width_in: float) -> list[str]:
    lines: list[str] = []
    for reason, n in items.items():
        lines += _wrap(f"• {reason} (n = {n})", width_in, indent="   ")
    return lines


def consort_lines(consort: dict[str, Any], arms: list[str]) -> dict[str, list[str]]:
    """Every text of the diagram, box by box (the test reads these to check no count is lost)."""
    side_w = 3.3
    arm_w = 3.35
    excluded_total = consort["excluded"] + consort["eligible_not_randomized"]
    excl = [f"Excluded (n = {excluded_total})"]
    excl += [f"Not eligible (n = {consort['excluded']})"] if consort["eligible_not_randomized"] else []
    excl += _count_lines(consort["exclusion_reasons"], side_w - 2 * _PAD_IN)
    if consort["eligible_not_randomized"]:
        excl.append(f"Eligible, not randomized (n = {consort['eligible_not_randomized']})")
        excl += _count_lines(consort.get("not_randomized_reasons") or {}, side_w - 2 * _PAD_IN)
    out = {
        "screened": [f"Assessed for eligibility (n = {consort['screened']})"],
        "excluded": excl,
        "randomized": [f"Randomized (n = {consort['randomized']})"],
    }
    for arm in arms:
        a = consort["arms"][arm]
        withdrawn = [f"Withdrew after randomization (n = {a['withdrawn']})"]
        withdrawn += _count_lines(a["withdrawal_reasons"], arm_w - 2 * _PAD_IN)
        withdrawn.append(f"Data removed at the participant's request (n = {a['data_removed']})")
        strata = [f"• {k} (n = {v})" for k, v in sorted(a["by_stratum"].items())]
        out[f"allocated:{arm}"] = [f"Allocated to {arm} (n = {a['allocated']})"]
        out[f"withdrawn:{arm}"] = withdrawn
        out[f"analysed:{arm}"] = [
            f"Analysed (n = {a['analysed']})",
            f"{consort['analysed_population'].replace('_', ' ')} population",
            *strata,
        ]
    return out


def consort_svg(consort: dict[str, Any], arms: list[str]) -> str:
    """CONSORT 2010 flow: assessed -> excluded (every reason, with n) -> randomized -> allocated per
    arm -> withdrawn / data removed (every reason) -> analysed (population, strata)."""
    text = consort_lines(consort, arms)
    gap = 0.28
    top = 0.0
    screened = _Box(0.55, top, 2.6, text["screened"])
    excluded = _Box(3.75, screened.bottom - gap / 2, 3.4, text["excluded"], fc="#fdf2e9")
    randomized = _Box(0.55, excluded.bottom - gap, 2.6, text["randomized"])
    y = randomized.bottom - gap * 1.4
    arm_boxes: list[tuple[_Box, _Box, _Box]] = []
    allocated = [
        _Box(0.05 + i * 3.6, y, 3.45, text[f"allocated:{arm}"], fc="#fbeeee" if i == 0 else "#eef5fb")
        for i, arm in enumerate(arms)
    ]
    y = min(b.bottom for b in allocated) - gap
    withdrawn = [_Box(0.05 + i * 3.6, y, 3.45, text[f"withdrawn:{arm}"]) for i, arm in enumerate(arms)]
    y = min(b.bottom for b in withdrawn) - gap
    analysed = [_Box(0.05 + i * 3.6, y, 3.45, text[f"analysed:{arm}"]) for i, arm in enumerate(arms)]
    arm_boxes = list(zip(allocated, withdrawn, analysed, strict=True))
    bottom = min(b.bottom for b in analysed) - 0.05
    height = -bottom + 0.05
    with plt.rc_context(_RC):
        fig = plt.figure(figsize=(WIDTH_IN, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, WIDTH_IN)
        ax.set_ylim(bottom, 0.05)
        ax.axis("off")

        def draw(b: _Box) -> None:
            ax.add_patch(
                FancyBboxPatch(
                    (b.x, b.bottom), b.w, b.h, boxstyle="round,pad=0,rounding_size=0.05",
                    fc=b.fc, ec="#333333", lw=0.8,
                )
            )  # fmt: skip
            for k, line in enumerate(b.lines):
                ax.text(
                    b.x + _PAD_IN,
                    b.y_top - _PAD_IN - (k + 0.5) * _LINE_IN,
                    line,
                    ha="left",
                    va="center",
                    fontsize=FONT_PT,
                    weight="bold" if k == 0 and b.bold_first else "normal",
                )

        def arrow(x1: float, y1: float, x2: float, y2: float) -> None:
            ax.annotate(
                "", xy=(x2, y2), xytext=(x1, y1), arrowprops={"arrowstyle": "-|>", "lw": 0.8, "color": "#333"}
            )

        for b in (screened, excluded, randomized):
            draw(b)
        arrow(screened.cx, screened.bottom, randomized.cx, randomized.y_top)
        mid = (excluded.y_top + excluded.bottom) / 2
        ax.plot([screened.cx, excluded.x], [mid, mid], color="#333333", lw=0.8)
        for alloc, wd, an in arm_boxes:
            for b in (alloc, wd, an):
                draw(b)
            ax.plot([randomized.cx, randomized.cx], [randomized.bottom, randomized.bottom - gap * 0.7],
                    color="#333333", lw=0.8)  # fmt: skip
            ax.plot([randomized.cx, alloc.cx], [randomized.bottom - gap * 0.7] * 2, color="#333333", lw=0.8)
            arrow(alloc.cx, randomized.bottom - gap * 0.7, alloc.cx, alloc.y_top)
            arrow(alloc.cx, alloc.bottom, wd.cx, wd.y_top)
            arrow(wd.cx, wd.bottom, an.cx, an.y_top)
        return _svg(fig)


# --------------------------------------------------------------------------------------------
# forest plot


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def forest_svg(
    rows: list[dict[str, Any]],
    arms: list[str],
    title: str,
    favourable: str | None = None,
    count_header: str = "Events/No.",
) -> str:
    """Forest plot at print size. ``rows`` items: label, estimate, ci_low, ci_high (None when not
    estimable or infinite), ``log`` (ratio scale), ``overall``, ``counts`` (per-arm text list or
    "a  b" string) and ``measure``."""
    n = len(rows)
    labels = ["\n".join(textwrap.wrap(str(r["label"]), 30)[:2]) for r in rows]
    row_in = 0.36 if any("\n" in lb for lb in labels) else 0.3
    top_in = 0.72  # title, then the column headings
    bottom_in = 0.75  # axis, tick labels and the "favours" line
    height = n * row_in + top_in + bottom_in
    ratio = bool(rows) and all(r.get("log", False) for r in rows)
    null = 1.0 if ratio else 0.0
    measure = str(next((r.get("measure") for r in rows if r.get("measure")), "estimate"))
    # columns (figure fractions): label | arm 1 counts | arm 2 counts | plot | estimate (CI)
    x_label, x_counts, x_plot, plot_w = 0.0, (0.375, 0.495), 0.57, 0.21
    x_est = x_plot + plot_w + 0.015
    with plt.rc_context({**_RC, "font.size": 9}):
        fig = plt.figure(figsize=(WIDTH_IN, height))
        ax = fig.add_axes((x_plot, bottom_in / height, plot_w, (n * row_in) / height))
        ax.set_ylim(-0.5, n - 0.5)
        tr = blended_transform_factory(fig.transFigure, ax.transData)
        fig.text(x_label, 1 - 0.06 / height, title, ha="left", va="top", fontsize=10, weight="bold")
        head_y = 1 - 0.32 / height
        fig.text(x_label, head_y, "Subgroup", weight="bold", va="top")
        if count_header:
            for j, arm in enumerate(arms):
                fig.text(x_counts[j], head_y, f"{arm}\n{count_header}", weight="bold", va="top", ha="center",
                         fontsize=8)  # fmt: skip
        fig.text(
            x_est,
            head_y,
            f"{measure[:1].upper()}{measure[1:]}\n(95% CI)",
            weight="bold",
            va="top",
            fontsize=8.5,
        )
        finite = [r for r in rows if None not in (r.get("estimate"), r.get("ci_low"), r.get("ci_high"))]
        for i, r in enumerate(rows):
            y = n - 1 - i
            ax.text(
                x_label,
                y,
                labels[i],
                transform=tr,
                va="center",
                weight="bold" if r.get("overall") else "normal",
            )
            counts = r.get("counts") or ""
            parts = counts if isinstance(counts, list) else [c for c in str(counts).split("  ") if c]
            for j, c in enumerate(parts[:2]):
                ax.text(x_counts[j], y, c, transform=tr, va="center", ha="center")
            if r in finite:
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="#222222", lw=1.2)
                ax.plot(r["estimate"], y, marker="D" if r.get("overall") else "s", color="#222222",
                        ms=7 if r.get("overall") else 5.5)  # fmt: skip
                txt = f"{_fmt(r['estimate'])} ({_fmt(r['ci_low'])} to {_fmt(r['ci_high'])})"
            elif r.get("estimate") is not None:
                low = "−∞" if r.get("ci_low") is None else _fmt(r["ci_low"])
                high = "∞" if r.get("ci_high") is None else _fmt(r["ci_high"])
                txt = f"{_fmt(r['estimate'])} ({low} to {high})"
            else:
                txt = "not estimable"
            ax.text(x_est, y, txt, transform=tr, va="center")
        ax.axvline(null, color="#777777", lw=0.8, ls="--")
        if ratio:
            ax.set_xscale("log")
            lo = min([r["ci_low"] for r in finite] + [0.5])
            hi = max([r["ci_high"] for r in finite] + [2.0])
            ax.set_xlim(max(lo / 1.2, 1e-3), min(hi * 1.2, 1e3))
            ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20) if lo / 1.2 <= t <= hi * 1.2]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        elif finite:
            lo = min(min(r["ci_low"] for r in finite), null)
            hi = max(max(r["ci_high"] for r in finite), null)
            pad = (hi - lo) * 0.08 or 1.0
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_yticks([])
        ax.spines[["top", "right", "left"]].set_visible(False)
        ax.tick_params(axis="x", labelsize=8.5)
        if favourable in ("higher", "lower"):
            left_arm, right_arm = (arms[0], arms[1]) if favourable == "lower" else (arms[1], arms[0])
            ax.set_xlabel(f"← favours {left_arm}    favours {right_arm} →", fontsize=8.5)
        return _svg(fig)
