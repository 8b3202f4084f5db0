"""Analysis data sets (ADaM-like, CDISC ADaM IG 1.3 naming) written beside a report, so that
every table can be rebuilt in R or SAS from files a statistician can read:

- ``adsl.csv``: one record per participant (subject level): STUDYID, USUBJID, SITEID, ARM, TRTN
  (1 treated, 0 control), STRATUM, the population flags (ITTFL, PPROTFL, SAFFL as Y/N), and the
  baseline variables of Table 1.
- ``adeff.csv``: one record per participant and participant-level endpoint (basic data
  structure): PARAMCD (the plan's endpoint id), PARAM, AVAL (1/0 for a binary endpoint, the
  time for a time-to-event endpoint, the ordered rank for an ordinal one), AVALC (text value),
  CNSR (time to event: 1 = censored), plus the derivation's intermediate values (e.g. the day-1
  SOFA and the mean of days 2-9 of the SOFA response).
- ``adrep.csv``: one record per participant and visit of every repeated or change endpoint, the
  frame its mixed model fits: PARAMCD, AVISITN (study day), AVAL, BASE, CHG.
- ``adae.csv``: one record per adverse event with ARM, SAFFL, the term and CTCAE grade.
- ``reproduce.R``: the R calls that rebuild the report's headline numbers from these files.

Derivations are the analysis package's own (``runner.endpoint_frame`` and ``runner.mmrm_frame``),
computed once over every participant; the population flags in ``adsl.csv`` select as the plan does.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from immunostrat.analysis.plan import AnalysisPlan, load_plan
from immunostrat.analysis.schema import TrialExport

ALL_FLAG = "_adam_all"
_FLAGS = {"itt": "ITTFL", "per_protocol": "PPROTFL", "safety": "SAFFL"}
_SUBJECT_KINDS = ("sofa_response", "mortality", "immune_reversal", "survival", "infection_status")


def _yn(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.fill_null(False)).then(pl.lit("Y")).otherwise(pl.lit("N"))


def adsl(export: TrialExport, plan: AnalysisPlan) -> pl.DataFrame:
    """One record per participant."""
    p = export.participants
    study = export.manifest.trial_id or plan.id
    baseline = [
        v
        for v in dict.fromkeys(plan.report.table1)
        if v in p.columns and v not in ("site", "arm", "stratum", "participant_id")
    ]
    flags = [
        _yn(pl.col(flag) if flag != "safety" else pl.col("safety").fill_null(pl.col("itt"))).alias(name)
        for flag, name in _FLAGS.items()
        if flag in p.columns
    ]
    return p.select(
        pl.lit(study).alias("STUDYID"),
        pl.col("participant_id").alias("USUBJID"),
        pl.col("site").alias("SITEID"),
        pl.col("arm").alias("ARM"),
        (pl.col("arm") == plan.design.treated_arm).cast(pl.Int64).alias("TRTN"),
        pl.col(plan.design.strata_column or "stratum").alias("STRATUM"),
        *flags,
        *[pl.col(v) for v in baseline],
    ).sort("USUBJID")


def _everyone(export: TrialExport) -> TrialExport:
    return replace(export, participants=export.participants.with_columns(pl.lit(True).alias(ALL_FLAG)))


def adeff(export: TrialExport, plan: AnalysisPlan) -> pl.DataFrame:
    """One record per participant and participant-level endpoint."""
    from immunostrat.analysis.runner import endpoint_frame

    everyone = _everyone(export)
    parts: list[pl.DataFrame] = []
    for e in plan.endpoints:
        if e.kind not in _SUBJECT_KINDS:
            continue
        f = endpoint_frame(everyone, e, ALL_FLAG, plan)
        if e.kind == "survival":
            aval = pl.col("time").cast(pl.Float64)
            avalc = pl.lit(None, dtype=pl.Utf8)
            cnsr = (1 - pl.col("event").cast(pl.Int64)).alias("CNSR")
        elif e.kind == "infection_status":
            aval = pl.col("score").cast(pl.Float64)
            avalc = pl.col("status").cast(pl.Utf8)
            cnsr = pl.lit(None, dtype=pl.Int64).alias("CNSR")
        else:
            aval = pl.col("outcome").cast(pl.Float64)
            avalc = (
                pl.when(pl.col("outcome").is_null())
                .then(None)
                .when(pl.col("outcome").cast(pl.Boolean))
                .then(pl.lit("Y"))
                .otherwise(pl.lit("N"))
            )
            cnsr = pl.lit(None, dtype=pl.Int64).alias("CNSR")
        keep = {"participant_id", "arm", "stratum", "outcome", "time", "event", "score", "status"}
        extra = [
            pl.col(c).cast(pl.Utf8).alias(c.upper())
            for c in f.columns
            if c not in keep and c not in ("death_day", "last_contact_day")
        ]
        parts.append(
            f.select(
                pl.col("participant_id").alias("USUBJID"),
                pl.lit(e.id).alias("PARAMCD"),
                pl.lit(e.label).alias("PARAM"),
                aval.alias("AVAL"),
                avalc.alias("AVALC"),
                cnsr,
                pl.struct(extra).struct.json_encode().alias("DERIVATION")
                if extra
                else pl.lit(None).alias("DERIVATION"),
            )
        )
    if not parts:
        return pl.DataFrame(schema={"USUBJID": pl.Utf8, "PARAMCD": pl.Utf8})
    return pl.concat(parts, how="vertical_relaxed").sort("PARAMCD", "USUBJID")


def adrep(export: TrialExport, plan: AnalysisPlan) -> pl.DataFrame:
    """One record per participant and visit of every repeated or change endpoint."""
    from immunostrat.analysis.runner import mmrm_frame

    everyone = _everyone(export)
    parts: list[pl.DataFrame] = []
    for e in plan.endpoints:
        if e.kind not in ("repeated", "change"):
            continue
        long = pl.from_pandas(mmrm_frame(everyone, plan, e, flag=ALL_FLAG))
        change = pl.col("change") if "change" in long.columns else pl.col("value") - pl.col("baseline")
        parts.append(
            long.select(
                pl.col("participant_id").alias("USUBJID"),
                pl.lit(e.id).alias("PARAMCD"),
                pl.lit(e.label).alias("PARAM"),
                pl.col("day").cast(pl.Int64).alias("AVISITN"),
                pl.col("value").cast(pl.Float64).alias("AVAL"),
                pl.col("baseline").cast(pl.Float64).alias("BASE"),
                change.cast(pl.Float64).alias("CHG"),
            )
        )
    if not parts:
        return pl.DataFrame(schema={"USUBJID": pl.Utf8, "PARAMCD": pl.Utf8, "AVISITN": pl.Int64})
    return pl.concat(parts, how="vertical_relaxed").sort("PARAMCD", "USUBJID", "AVISITN")


def adae(export: TrialExport) -> pl.DataFrame | None:
    ae = export.adverse_events
    if ae is None:
        return None
    p = export.participants.select(
        "participant_id", "arm", _yn(pl.col("safety").fill_null(pl.col("itt"))).alias("SAFFL")
    )
    grade = pl.col("ctcae_grade") if "ctcae_grade" in ae.columns else pl.lit(None, dtype=pl.Int64)
    return (
        ae.join(p, on="participant_id", how="inner")
        .select(
            pl.col("participant_id").alias("USUBJID"),
            pl.col("arm").alias("ARM"),
            "SAFFL",
            pl.col("day").alias("ASTDY"),
            pl.col("term").alias("AEDECOD"),
            grade.alias("AETOXGR"),
            _yn(pl.col("serious")).alias("AESER"),
        )
        .sort("USUBJID", "ASTDY")
    )


def _r_script(plan: AnalysisPlan) -> str:
    treated, control = plan.design.treated_arm, plan.design.control_arm
    lines = [
        "# Rebuilds the report's headline numbers from the analysis data sets in this folder.",
        f"# Analysis plan {plan.id} v{plan.version}; treated arm {treated!r}, control {control!r}.",
        "library(survival)",
        "adsl <- read.csv('adsl.csv', stringsAsFactors = FALSE)",
        "adeff <- read.csv('adeff.csv', stringsAsFactors = FALSE)",
        "adrep <- read.csv('adrep.csv', stringsAsFactors = FALSE)",
    ]
    for e in plan.endpoints:
        flag = _FLAGS.get(plan.populations[plan.primary_population].flag, "ITTFL")
        sel = f"d <- merge(subset(adsl, {flag} == 'Y'), subset(adeff, PARAMCD == '{e.id}'), by = 'USUBJID')"
        if e.kind in ("sofa_response", "mortality", "immune_reversal"):
            lines += [
                f"# {e.label}",
                sel,
                f"arm <- factor(d$ARM, levels = c('{treated}', '{control}'))",
                "tab <- table(arm, factor(d$AVAL, levels = c(1, 0)))",
                "print(tab); print(fisher.test(tab))",
            ]
        elif e.kind == "survival":
            lines += [
                f"# {e.label}",
                sel,
                "print(coxph(Surv(AVAL, 1 - CNSR) ~ TRTN + strata(STRATUM), data = d, ties = 'efron'))",
                "print(survdiff(Surv(AVAL, 1 - CNSR) ~ TRTN + strata(STRATUM), data = d))",
            ]
        elif e.kind == "infection_status":
            lines += [
                f"# {e.label}",
                sel,
                "print(table(d$ARM, d$AVALC))",
                "print(MASS::polr(factor(AVAL, ordered = TRUE) ~ TRTN, data = d, Hess = TRUE))",
            ]
        elif e.kind in ("repeated", "change"):
            lines += [
                f"# {e.label}: the mixed model's frame (nlme::gls with corSymm + varIdent by visit)",
                f"r <- merge(subset(adsl, {flag} == 'Y'), subset(adrep, PARAMCD == '{e.id}'),",
                "  by = 'USUBJID')",
                "r$visit <- factor(r$AVISITN)",
                "fit <- nlme::gls(AVAL ~ visit * TRTN + BASE, data = r, method = 'REML',",
                "  na.action = na.omit,",
                "  correlation = nlme::corSymm(form = ~ as.integer(visit) | USUBJID),",
                "  weights = nlme::varIdent(form = ~ 1 | visit))",
                "print(summary(fit))",
            ]
    return "\n".join(lines) + "\n"


def write_analysis_data(export: TrialExport, plan: AnalysisPlan | str, folder: str | Path) -> dict[str, str]:
    """Write the analysis data sets (and ``reproduce.R``) into ``folder``; returns name -> path."""
    the_plan = load_plan(plan)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    frames: dict[str, pl.DataFrame | None] = {
        "adsl": adsl(export, the_plan),
        "adeff": adeff(export, the_plan),
        "adrep": adrep(export, the_plan),
        "adae": adae(export),
    }
    written: dict[str, str] = {}
    for name, frame in frames.items():
        if frame is None:
            continue
        path = out / f"{name}.csv"
        tmp = out / f".{name}.csv.tmp"
        frame.write_csv(tmp)
        tmp.replace(path)
        written[name] = str(path)
    script = out / "reproduce.R"
    script.write_text(_r_script(the_plan), encoding="utf-8")
    written["reproduce.R"] = str(script)
    meta: dict[str, Any] = {
        "plan": the_plan.id,
        "plan_version": the_plan.version,
        "trial_id": export.manifest.trial_id,
        "records": {k: (v.height if v is not None else 0) for k, v in frames.items()},
    }
    (out / "datasets.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    written["datasets.json"] = str(out / "datasets.json")
    return written
