"""Report tables a journal prints: Table 1 (baseline characteristics by arm) and the adverse-event
table (participants by MedDRA term and worst CTCAE grade, by arm), as data and as HTML through
great-tables.

Table 1 follows CONSORT 2010 item 15 (no P values): one row per variable with clinical labels and
units (from the concept dictionary where the export column is a concept, else from the labels
below); a yes/no variable is one row (the "yes" count); a variable with more levels has a heading
row and one indented row per level. For each arm the columns are separate: No. (participants with
a value), No. (%), Mean (SD) and Median [IQR]; quartiles are R's default (type 7, linear), so
``quantile()`` in R on the analysis data set (``analyze --analysis-data``) gives the same numbers.

The adverse-event table counts participants (not events) in the safety population: a participant
counts once per term, at the worst grade recorded for that term, and once in "Any adverse event".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from immunostrat.analysis.plan import AnalysisPlan
from immunostrat.analysis.schema import TrialExport

INDENT = "\u2003"
"""An em space: level rows under a variable heading are indented with it (survives HTML and PDF)."""

# Export columns that are not concepts of the dictionary: label and unit as a journal prints them.
_LABELS: dict[str, tuple[str, str | None]] = {
    "age": ("Age", "years"),
    "sex": ("Sex", None),
    "baseline_sofa": ("SOFA score at randomization", "points, 0-24"),
    "weight_kg": ("Weight", "kg"),
    "septic_shock": ("Septic shock (Sepsis-3)", None),
    "infection_site": ("Site of infection", None),
    "site": ("Study site", None),
    "stratum": ("Stratum", None),
    "hla_dr_abc": ("Monocyte HLA-DR", "antibodies bound per cell"),
    "mex_sledai": ("MEX-SLEDAI", "points, 0-32"),
    "sledai_2k": ("SLEDAI-2K", "points, 0-105"),
    "sofa_total": ("Total SOFA score", "points, 0-24"),
}
_LEVELS: dict[str, dict[str, str]] = {
    "sex": {"F": "Female", "M": "Male", "other": "Other"},
    "infection_site": {
        "CAP": "Community-acquired pneumonia",
        "HAP": "Hospital-acquired pneumonia",
        "VAP": "Ventilator-associated pneumonia",
        "bacteremia": "Primary bacteremia",
    },
}
# unit suffixes of export column names, tried from the end when looking a column up as a concept
_UNIT_SUFFIX = re.compile(r"_(ng_ml|mg_l|mg_dl|pg_ml|iu_ml|abc|g_l|mmol_l|umol_l|kg|pct|percent)$")


@dataclass
class Table1Row:
    """One printed row: a variable (continuous or yes/no), a categorical heading, or a level."""

    label: str
    kind: str  # "continuous" | "binary" | "heading" | "level"
    variable: str
    level: str | None = None
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    """arm -> {"n": with a value, "count", "percent", "mean", "sd", "median", "q1", "q3"}."""


def variable_label(column: str, plan: AnalysisPlan | None = None) -> str:
    """'Ferritin (serum), ng/mL' for ``ferritin_ng_ml``: the concept's name and canonical unit, or
    the label above; never the raw column name when a label is known."""
    if column in _LABELS:
        name, unit = _LABELS[column]
        if column == "stratum" and plan is not None and plan.design.strata_column:
            name = "Stratum (randomization)"
        return f"{name}, {unit}" if unit else name
    concept = _concept_of(column)
    if concept is not None:
        name, unit = concept
        return f"{name}, {unit}" if unit and unit != "1" else name
    return column.replace("_", " ").capitalize()


def _concept_of(column: str) -> tuple[str, str] | None:
    from immunostrat.concepts.dictionary import load_concepts

    concepts = load_concepts()
    for candidate in (column, _UNIT_SUFFIX.sub("", column)):
        cid = concepts.resolve(candidate)
        if cid is not None:
            c = concepts[cid]
            # the first clause of the description is the name; the rest is provenance
            name = re.split(r"[.,;]\s|\s\(", c.description, maxsplit=1)[0].strip()
            return name, c.canonical_unit
    return None


def level_label(column: str, level: str, plan: AnalysisPlan | None = None) -> str:
    if column == (plan.design.strata_column if plan else None) and plan is not None:
        # "MALS (anakinra vs placebo)" -> "MALS": the treatment belongs to the methods, not Table 1
        label = plan.design.stratum_labels.get(level, level).split(" (")[0]
        return label[:1].upper() + label[1:]
    return _LEVELS.get(column, {}).get(level, level)


def _quantile7(values: list[float], q: float) -> float:
    """R's default quantile (type 7): linear between order statistics."""
    v = sorted(values)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def _continuous(values: list[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"n": 0}
    mean = sum(values) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else None
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "median": _quantile7(values, 0.5),
        "q1": _quantile7(values, 0.25),
        "q3": _quantile7(values, 0.75),
    }


def _is_yes_no(series: pl.Series) -> bool:
    if series.dtype == pl.Boolean:
        return True
    values = {str(v).strip().lower() for v in series.drop_nulls().unique().to_list()}
    return bool(values) and values <= {"true", "false", "yes", "no"}


def _truthy(series: pl.Series) -> pl.Series:
    if series.dtype == pl.Boolean:
        return series
    return series.cast(pl.Utf8).str.strip_chars().str.to_lowercase().is_in(["true", "yes"])


def table1_rows(
    export: TrialExport, plan: AnalysisPlan, population_flag: str | None = None
) -> list[Table1Row]:
    """Table 1 in the plan's primary population: the plan's ``report.table1`` variables (the
    stratification factor first when the plan stratifies)."""
    flag = population_flag or plan.populations[plan.primary_population].flag
    p = export.participants.filter(pl.col(flag).fill_null(False))
    arms = (plan.design.treated_arm, plan.design.control_arm)
    variables = list(plan.report.table1)
    strata_col = plan.design.strata_column
    if strata_col and strata_col not in variables:
        variables = [strata_col, *variables]
    rows: list[Table1Row] = []
    for var in variables:
        if var not in p.columns or p[var].null_count() == p.height:
            continue
        col = p[var]
        label = variable_label(var, plan)
        by_arm = {arm: p.filter(pl.col("arm") == arm)[var] for arm in arms}
        if _is_yes_no(col):
            row = Table1Row(label, "binary", var, "true")
            for arm, s in by_arm.items():
                n = int(s.is_not_null().sum())
                k = int(_truthy(s.drop_nulls()).sum())
                row.cells[arm] = {"n": n, "count": k, "percent": 100 * k / n if n else None}
            rows.append(row)
        elif col.dtype in (pl.Utf8, pl.Categorical, pl.Enum):
            heading = Table1Row(label, "heading", var)
            for arm, s in by_arm.items():
                heading.cells[arm] = {"n": int(s.is_not_null().sum())}
            rows.append(heading)
            levels = sorted(col.cast(pl.Utf8).drop_nulls().unique().to_list())
            if strata_col == var and plan.design.strata:
                order = {s: i for i, s in enumerate(plan.design.strata)}
                levels.sort(key=lambda lvl: (order.get(lvl, len(order)), lvl))
            for lvl in levels:
                row = Table1Row(INDENT + level_label(var, lvl, plan), "level", var, lvl)
                for arm, s in by_arm.items():
                    txt = s.cast(pl.Utf8)
                    n = int(txt.is_not_null().sum())
                    k = int((txt == lvl).sum())
                    row.cells[arm] = {"n": n, "count": k, "percent": 100 * k / n if n else None}
                rows.append(row)
        else:
            row = Table1Row(label, "continuous", var)
            for arm, s in by_arm.items():
                row.cells[arm] = _continuous([float(x) for x in s.drop_nulls().to_list()])
            rows.append(row)
    return rows


def _digits(rows_values: list[float | None]) -> int:
    """Decimals for a continuous row: one below 100 (SOFA, age), none from 100 (ferritin, HLA-DR)."""
    finite = [abs(v) for v in rows_values if v is not None]
    return 0 if finite and max(finite) >= 100 else 1


def _fmt_cells(row: Table1Row, arm: str) -> dict[str, str]:
    c = row.cells.get(arm, {})
    blank = {"n": "", "pct": "", "mean": "", "median": ""}
    if row.kind == "heading":
        return {**blank, "n": str(c.get("n", 0))}
    if row.kind in ("binary", "level"):
        n = c.get("n", 0)
        pct = "—" if not n else f"{c['count']} ({c['percent']:.1f})"
        return {**blank, "n": str(n) if row.kind == "binary" else "", "pct": pct}
    if not c.get("n"):
        return {**blank, "n": "0", "mean": "—", "median": "—"}
    d = _digits([c.get("median"), c.get("q3")])
    sd = "—" if c.get("sd") is None else f"{c['sd']:.{d}f}"
    return {
        **blank,
        "n": str(c["n"]),
        "mean": f"{c['mean']:.{d}f} ({sd})",
        "median": f"{c['median']:.{d}f} [{c['q1']:.{d}f}–{c['q3']:.{d}f}]",
    }


def table1_frame(rows: list[Table1Row], arms: list[str]) -> pl.DataFrame:
    """The printed Table 1 as text columns: label, then per arm n / pct / mean / median."""
    data: dict[str, list[str]] = {"label": [r.label for r in rows]}
    for i, arm in enumerate(arms):
        cells = [_fmt_cells(r, arm) for r in rows]
        for key in ("n", "pct", "mean", "median"):
            data[f"a{i}_{key}"] = [c[key] for c in cells]
    return pl.DataFrame(data)


def _gt_style(gt: Any) -> Any:
    return gt.tab_options(
        table_font_names=["DejaVu Sans", "Arial", "sans-serif"],
        table_font_size="8.5pt",
        heading_title_font_size="10.5pt",
        heading_align="left",
        column_labels_font_weight="bold",
        data_row_padding="2px",
        source_notes_font_size="8pt",
        table_width="100%",
        stub_border_style="none",
    ).tab_style(style=_nowrap(), locations=_body())


def _nowrap() -> Any:
    from great_tables import style

    return style.css("white-space: nowrap")


def _body() -> Any:
    from great_tables import loc

    return loc.body()


def table1_html(
    export: TrialExport, plan: AnalysisPlan, population_flag: str | None = None, number: int = 1
) -> str:
    """Table 1 as HTML (great-tables), one table with the arms as column spanners."""
    from great_tables import GT

    arms = [plan.design.treated_arm, plan.design.control_arm]
    flag = population_flag or plan.populations[plan.primary_population].flag
    rows = table1_rows(export, plan, flag)
    frame = table1_frame(rows, arms)
    p = export.participants.filter(pl.col(flag).fill_null(False))
    gt = GT(frame, rowname_col="label", id="table-1").tab_stubhead(label="Characteristic")
    labels: dict[str, Any] = {}
    for i, arm in enumerate(arms):
        n = int((p["arm"] == arm).sum())
        cols = [f"a{i}_{k}" for k in ("n", "pct", "mean", "median")]
        gt = gt.tab_spanner(label=f"{arm} (n = {n})", columns=cols)
        labels.update(dict(zip(cols, ["No.", "No. (%)", "Mean (SD)", "Median [IQR]"], strict=True)))
    gt = gt.cols_label(**labels).cols_align("right", columns=list(labels))
    population = plan.primary_population.replace("_", " ")
    gt = gt.tab_header(title=f"Table {number}. Baseline characteristics ({population} population)")
    gt = gt.tab_source_note(
        "No. is the number of participants with a value; percentages use it as denominator. "
        "Mean (SD) and median [IQR] for continuous variables (quartiles as R's quantile type 7). "
        "No P values (CONSORT 2010 item 15)."
    )
    return str(_gt_style(gt).as_raw_html())


# --------------------------------------------------------------------------------------------
# adverse events

GRADE_BANDS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Grade 1-2", (1, 2)),
    ("Grade 3-4", (3, 4)),
    ("Grade 5", (5,)),
)


def adverse_event_rows(export: TrialExport, plan: AnalysisPlan) -> dict[str, Any] | None:
    """Participants by term and worst CTCAE grade, per arm, in the safety population (safety flag,
    else ITT); None without an adverse-event table."""
    ae = export.adverse_events
    if ae is None:
        return None
    arms = [plan.design.treated_arm, plan.design.control_arm]
    p = export.participants.filter(pl.col("safety").fill_null(pl.col("itt")).fill_null(False))
    n = {arm: int((p["arm"] == arm).sum()) for arm in arms}
    grade = ae["ctcae_grade"] if "ctcae_grade" in ae.columns else pl.Series([None] * ae.height)
    events = ae.with_columns(grade.cast(pl.Int64, strict=False).alias("grade")).join(
        p.select("participant_id", "arm"), on="participant_id", how="inner"
    )
    ungraded = int(events["grade"].null_count())

    def row(label: str, sub: pl.DataFrame) -> dict[str, Any]:
        out: dict[str, Any] = {"label": label, "arms": {}}
        worst = sub.group_by("participant_id", "arm").agg(pl.col("grade").max().alias("worst"))
        for arm in arms:
            w = worst.filter(pl.col("arm") == arm)
            cell: dict[str, Any] = {"any": int(w.height)}
            for band, grades in GRADE_BANDS:
                cell[band] = int(w["worst"].is_in(list(grades)).sum())
            cell["events"] = int(sub.filter(pl.col("arm") == arm).height)
            out["arms"][arm] = cell
        out["total"] = sum(c["any"] for c in out["arms"].values())
        return out

    serious = events.filter(pl.col("serious").fill_null(False))
    terms = []
    for term in events["term"].unique().to_list():
        name = str(term)
        terms.append(row(name[:1].upper() + name[1:], events.filter(pl.col("term") == term)))
    terms.sort(key=lambda r: (-r["total"], r["label"].lower()))
    return {
        "arms": arms,
        "n": n,
        "any": row("Any adverse event", events),
        "serious": row("Any serious adverse event", serious),
        "terms": terms,
        "ungraded_events": ungraded,
        "events": int(events.height),
    }


def _pct(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.1f})" if n else "—"


def adverse_event_html(table: dict[str, Any], number: int = 2) -> str:
    """The adverse-event table as HTML (great-tables)."""
    from great_tables import GT

    arms, n = table["arms"], table["n"]
    # no grade recorded at all: the grade columns would only say 0, so they are left out
    graded = table["ungraded_events"] < table["events"]
    bands = [b for b, _ in GRADE_BANDS] if graded else []
    data: dict[str, list[str]] = {"label": [], "group": []}
    keys = ["any", *bands]
    for i in range(len(arms)):
        for k in range(len(keys)):
            data[f"a{i}_{k}"] = []
    for group, rows in (("Overall", [table["any"], table["serious"]]), ("By MedDRA term", table["terms"])):
        for r in rows:
            data["label"].append(r["label"])
            data["group"].append(group)
            for i, arm in enumerate(arms):
                for k, key in enumerate(keys):
                    data[f"a{i}_{k}"].append(_pct(r["arms"][arm][key], n[arm]))
    gt = GT(pl.DataFrame(data), rowname_col="label", groupname_col="group", id="table-ae")
    gt = gt.tab_stubhead(label="Adverse event")
    labels: dict[str, Any] = {}
    for i, arm in enumerate(arms):
        cols = [f"a{i}_{k}" for k in range(len(keys))]
        gt = gt.tab_spanner(label=f"{arm} (n = {n[arm]})", columns=cols)
        labels.update(dict(zip(cols, ["Any grade", *bands], strict=True)))
    gt = gt.cols_label(**labels).cols_align("right", columns=list(labels))
    gt = gt.tab_header(
        title=f"Table {number}. Adverse events by term and worst CTCAE grade (safety population)"
    )
    note = (
        "Participants, No. (%): a participant counts once per term, at the worst CTCAE v5 grade "
        f"recorded for it. {table['events']} events in all."
    )
    if not graded and table["events"]:
        note += " The export records no CTCAE grade (ctcae_grade column), so only any-grade counts are shown."
    elif table["ungraded_events"]:
        note += (
            f" {table['ungraded_events']} events have no CTCAE grade in the export: they count under "
            "Any grade only."
        )
    gt = gt.tab_source_note(note)
    return str(_gt_style(gt).as_raw_html())
