"""The in-silico page: a modeller runs a batch of simulated trials of one design on a virtual population
(the same ``run_trials`` as ``immunostrat simulate trial``) in the background, watches its progress and
reads power with its Monte Carlo error, rates per arm and the per-stratum effects, and downloads the
per-trial results. Virtual patients only: the arms are the simulated design's, never a real trial's."""

from __future__ import annotations

import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response

from immunostrat.api.auth import Principal, confirm_current
from immunostrat.simulation import TrialResults
from immunostrat.simulation.runs import (
    DESIGNS,
    ENDPOINTS,
    MODEL_VARIANTS,
    STEPS,
    power_estimate,
    run_trials,
)
from immunostrat.web.core import (
    PageError,
    add_main_page,
    logger,
    page_router,
    posted,
    render,
    signed_in,
    user_of,
)
from immunostrat.web.svgplot import svg_markup

router = page_router()

MODELLERS = frozenset({"modeller"})
"""The role made for in-silico work. No API operation stands for this page (simulation is not served
as JSON), so the set is its own: trial roles work on real participants and care roles decide at the
bedside or read cohorts."""
add_main_page("/insilico", "In-silico trials", MODELLERS)

BOUNDS: dict[str, tuple[int, int]] = {
    "n": (2, 2000),
    "trials": (1, 5000),
    "population_size": (200, 10000),
    "seed": (0, 2**31 - 1),
}
"""Inclusive bounds of the numbers a run takes: beyond them a run would take hours of a shared server
(about 50 ms per trial of 2,000 and 5 ms per virtual patient on one core)."""
LABELS = {
    "n": "Patients per trial",
    "trials": "Number of trials",
    "population_size": "Virtual population",
    "seed": "Seed",
}
DEFAULTS = {
    "design": "immunosep",
    "model": "reynolds2006",
    "endpoint": "sofa_response",
    "n": "276",
    "trials": "200",
    "population_size": "4000",
    "seed": "0",
}
MAX_ACTIVE = 2
"""Runs simulating at once in this server (each on a thread of its own); more are refused."""
MAX_KEPT = 20
"""Finished runs kept per user (the oldest go first); runs live in the serving process only."""


class Cancelled(Exception):
    """Raised inside a run's progress callback once its owner cancelled it."""


@dataclass
class Run:
    id: str
    user_id: int
    spec: dict[str, Any]
    started: float = field(default_factory=time.time)
    step: str = STEPS[0]
    done: int = 0
    total: int = 0
    finished: float | None = None
    result: TrialResults | None = None
    svg: str = ""
    """The per-trial differences as inline SVG, drawn once when the run ends."""
    error: str | None = None
    cancel: bool = False

    @property
    def active(self) -> bool:
        return self.finished is None

    def progress(self, step: str, done: int, total: int) -> None:
        if self.cancel:
            raise Cancelled
        self.step, self.done, self.total = step, done, total


class RunBoard:
    """The app's in-silico runs: each on a daemon thread (so a stopping server never waits for one),
    at most :data:`MAX_ACTIVE` at once, keyed by a random id and bound to the user who started it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, Run] = {}

    def start(self, user_id: int, spec: dict[str, Any]) -> Run:
        with self.lock:
            if sum(r.active for r in self.runs.values()) >= MAX_ACTIVE:
                raise PageError(
                    503,
                    f"{MAX_ACTIVE} in-silico runs are already simulating on this server: "
                    "wait for one to finish, or cancel one of yours",
                )
            mine = sorted((r for r in self.runs.values() if r.user_id == user_id), key=lambda r: r.started)
            for old in [r for r in mine if not r.active][: max(0, len(mine) - MAX_KEPT + 1)]:
                del self.runs[old.id]
            run = Run(secrets.token_urlsafe(16), user_id, spec)
            self.runs[run.id] = run
        threading.Thread(target=self._work, args=(run,), name=f"insilico-{run.id[:6]}", daemon=True).start()
        return run

    @staticmethod
    def _work(run: Run) -> None:
        try:
            s = run.spec
            run.result = run_trials(
                s["design"],
                s["n"],
                s["trials"],
                s["seed"],
                model=s["model"],
                endpoint=s["endpoint"],
                population_size=s["population_size"],
                progress=run.progress,
            )
        except Cancelled:
            run.error = "cancelled"
        except Exception as exc:  # shown on the run's page; the thread must not die silently
            logger.exception("in-silico run %s failed", run.id[:6])
            run.error = f"the simulation failed: {exc}"
        else:
            try:
                run.svg = differences_svg(run.result)
            except Exception:  # the numbers stand without their figure
                logger.exception("in-silico run %s: no figure", run.id[:6])
        finally:
            run.finished = time.time()

    def get(self, run_id: str, user_id: int) -> Run:
        """The run, when ``user_id`` started it (anyone else's is "not found", never "forbidden")."""
        with self.lock:
            run = self.runs.get(run_id)
        if run is None or run.user_id != user_id:
            raise PageError(404, "no such in-silico run (runs are kept in memory until the server restarts)")
        return run

    def of(self, user_id: int) -> list[Run]:
        with self.lock:
            mine = [r for r in self.runs.values() if r.user_id == user_id]
        return sorted(mine, key=lambda r: r.started, reverse=True)


def _board(request: Request) -> RunBoard:
    """The app's board, made on first use (one per app: tests with two apps never share runs)."""
    state = request.app.state
    board = getattr(state, "insilico_runs", None)
    if board is None:
        with _BOARD_LOCK:
            board = getattr(state, "insilico_runs", None)
            if board is None:
                board = state.insilico_runs = RunBoard()
    assert isinstance(board, RunBoard)
    return board


_BOARD_LOCK = threading.Lock()


async def _current(request: Request, principal: Principal) -> Principal:
    """The session's user as the database has it now (a deactivated user stops at once)."""
    await run_in_threadpool(confirm_current, request, principal)
    return principal


def parse_spec(data: FormData | dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The run's settings from the form's strings, and an error per field that is not acceptable."""
    spec: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, choices, label in (
        ("design", DESIGNS, "Design"),
        ("model", MODEL_VARIANTS, "Model variant"),
        ("endpoint", ENDPOINTS, "Primary endpoint"),
    ):
        value = str(data.get(name, "")).strip()
        if value not in choices:
            errors[name] = f"{label}: choose one of {', '.join(choices)}"
        spec[name] = value
    for name, (low, high) in BOUNDS.items():
        raw = str(data.get(name, "")).strip().replace(",", "").replace("_", "")
        try:
            number = int(raw)
        except ValueError:
            errors[name] = f"{LABELS[name]} must be a whole number from {low:,} to {high:,}"
            continue
        if not low <= number <= high:
            errors[name] = f"{LABELS[name]} must be from {low:,} to {high:,} (got {number:,})"
        spec[name] = number
    return spec, errors


def _form_context(values: dict[str, Any], errors: dict[str, str], runs: list[Run]) -> dict[str, Any]:
    return {
        "designs": [(d.id, d.name) for d in DESIGNS.values()],
        "models": MODEL_VARIANTS,
        "endpoints": list(ENDPOINTS),
        "bounds": BOUNDS,
        "labels": LABELS,
        "values": values,
        "errors": errors,
        "runs": [_run_view(r) for r in runs],
    }


@router.get("/insilico")
async def insilico_page(request: Request) -> Response:
    principal = await _current(request, signed_in(request, MODELLERS))
    runs = _board(request).of(principal.user_id)
    context = {"user": user_of(request, principal), **_form_context(dict(DEFAULTS), {}, runs)}
    return render(request, "insilico_form.html", context)


@router.post("/insilico")
async def insilico_start(request: Request) -> Response:
    """Start a run from the form (CSRF-checked); a value out of bounds comes back named at its field."""
    principal, data = await posted(request, MODELLERS)
    await _current(request, principal)
    spec, errors = parse_spec(data)
    board = _board(request)
    if errors:
        values = {k: str(data.get(k, "")) for k in DEFAULTS}
        context = {
            "user": user_of(request, principal),
            **_form_context(values, errors, board.of(principal.user_id)),
        }
        return render(request, "insilico_form.html", context, status=422)
    run = board.start(principal.user_id, spec)
    return RedirectResponse(f"/web/insilico/runs/{run.id}", status_code=303)


def _run_view(run: Run) -> dict[str, Any]:
    """What the run's page and fragment show: settings, progress, and when done the results."""
    s = run.spec
    design = DESIGNS[s["design"]]
    view: dict[str, Any] = {
        "id": run.id,
        "spec": s,
        "design_name": design.name,
        "active": run.active,
        "error": run.error,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.started)),
        "elapsed": round((run.finished or time.time()) - run.started, 1),
        "step": run.step,
        "step_number": STEPS.index(run.step) + 1 if run.step in STEPS else 1,
        "steps": len(STEPS),
        "done": run.done,
        "total": run.total,
        "result": None,
    }
    if run.result is not None:
        view["result"] = _results_view(run.result)
        view["svg"] = run.svg
    return view


def _results_view(results: TrialResults) -> dict[str, Any]:
    est = power_estimate(results)
    design = results.design
    arms = list(results.rates)
    endpoints = list(ENDPOINTS)
    rates = [
        {
            "endpoint": ep,
            "label": ep.replace("_", " "),
            "primary": ep == design.primary_endpoint,
            "values": [results.rates[a][ep] for a in arms],
            "difference": results.rates[arms[0]][ep] - results.rates[arms[-1]][ep] if len(arms) > 1 else None,
        }
        for ep in endpoints
    ]
    strata = [
        {
            "endotype": name,
            "n_per_trial": sg.n_per_trial,
            "differences": [sg.mean_difference[ep] for ep in endpoints],
            "rescued": sg.rescued,
            "harmed": sg.harmed,
            "harm": sg.harm,
        }
        for name, sg in results.subgroups.items()
    ]
    therapies = (
        [f"{name}: {_therapy_id(design.therapy_for(e))}" for e, name in _eligible(design)]
        if design.therapy_by_endotype
        else [f"every eligible patient: {_therapy_id(design.therapy_for(design.eligible[0]))}"]
    )
    return {
        "power": est,
        "ci_percent": (100 * est.low, 100 * est.high),
        "type1": results.type1_error,
        "type1_se": results.type1_mc_se,
        "alpha": design.alpha,
        "primary": design.primary_endpoint,
        "higher_better": ENDPOINTS[design.primary_endpoint],
        "arms": arms,
        "therapies": therapies,
        "endpoints": [ep.replace("_", " ") for ep in endpoints],
        "rates": rates,
        "strata": strata,
        "fit": results.population_fit,
        "finite": math.isfinite(est.se),
    }


def differences_svg(results: TrialResults) -> str:
    """A histogram of the trials' treatment-minus-placebo rate on the primary endpoint, the trials that
    count as power stacked apart from the others; hovering a bar gives its range and counts."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    per = results.per_trial
    diff = 100 * (np.asarray(per["rate_treatment"], float) - np.asarray(per["rate_placebo"], float))
    won = np.asarray(per["significant_benefit"], bool)
    bins = min(40, max(8, math.ceil(math.sqrt(diff.size))))
    width = max(1.0, math.ceil((float(diff.max()) - float(diff.min())) / bins))
    first = math.floor(float(diff.min()) / width) * width  # zero falls on an edge
    edges = first + width * np.arange(math.floor((float(diff.max()) - first) / width) + 2)
    counts_won, _ = np.histogram(diff[won], edges)
    counts_other, _ = np.histogram(diff[~won], edges)
    won_colour, other_colour = "#1d6b2f", "#8a94a3"
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    titles: dict[str, str] = {}
    for i, left in enumerate(edges[:-1]):
        total = int(counts_won[i] + counts_other[i])
        if total == 0:
            continue
        gid = f"bin-{i}"
        ax.bar([left], [counts_other[i]], width=width, align="edge", color=other_colour, edgecolor="#ffffff")
        ax.bar(
            [left], [counts_won[i]], width=width, align="edge", bottom=[counts_other[i]],
            color=won_colour, edgecolor="#ffffff",
        )  # fmt: skip
        ax.bar([left], [total], width=width, align="edge", color="none", gid=gid)
        titles[gid] = (
            f"difference {left:+.0f} to {left + width:+.0f} points: {total} trial{'s' * (total != 1)}, "
            f"{int(counts_won[i])} with a significant benefit"
        )
    ax.axvline(0, color="#1b1f24", linewidth=1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [
        Patch(color=won_colour, label="significant benefit (counts as power)"),
        Patch(color=other_colour, label="other trials"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, fontsize=9, frameon=False)
    endpoint = results.design.primary_endpoint.replace("_", " ")
    ax.set_xlabel(f"treatment minus placebo, {endpoint} (percentage points)")
    ax.set_ylabel("trials")
    ax.grid(True, axis="y", color="#d9dde3", linewidth=0.6)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return svg_markup(
        fig,
        prefix="insilico-diff",
        label=f"Histogram of the {results.trials} trials' treatment minus placebo difference in {endpoint}; "
        "the power and rates are in the text and tables",
        titles=titles,
    )


def _eligible(design: Any) -> list[tuple[int, str]]:
    from immunostrat.simulation import ENDOTYPE_NAMES

    return [(e, ENDOTYPE_NAMES[e]) for e in design.eligible]


def _therapy_id(therapy: Any) -> str:
    return therapy if isinstance(therapy, str) else str(therapy.id)


@router.get("/insilico/runs/{run_id}")
async def run_page(request: Request, run_id: str) -> Response:
    principal = await _current(request, signed_in(request, MODELLERS))
    run = _board(request).get(run_id, principal.user_id)
    return render(request, "insilico_run.html", {"user": user_of(request, principal), "run": _run_view(run)})


@router.get("/insilico/runs/{run_id}/progress")
async def run_progress(request: Request, run_id: str) -> Response:
    """The fragment htmx polls every second: the progress bar while simulating (which polls again),
    the results once done (which does not)."""
    principal = await _current(request, signed_in(request, MODELLERS))
    run = _board(request).get(run_id, principal.user_id)
    return render(request, "insilico_progress.html", {"run": _run_view(run)})


@router.post("/insilico/runs/{run_id}/cancel")
async def run_cancel(request: Request, run_id: str) -> Response:
    principal, _ = await posted(request, MODELLERS)
    await _current(request, principal)
    _board(request).get(run_id, principal.user_id).cancel = True
    return RedirectResponse(f"/web/insilico/runs/{run_id}", status_code=303)


@router.get("/insilico/runs/{run_id}/trials.csv")
async def run_csv(request: Request, run_id: str) -> Response:
    """One row per simulated trial (``TrialResults.per_trial_frame``, as ``simulate trial --output``)."""
    principal = await _current(request, signed_in(request, MODELLERS))
    run = _board(request).get(run_id, principal.user_id)
    if run.result is None:
        raise PageError(409, "this run has no results yet" if run.active else f"this run ended: {run.error}")
    result = run.result
    body = await run_in_threadpool(lambda: result.per_trial_frame().write_csv())
    s = run.spec
    name = f"insilico-{s['design']}-n{s['n']}-{s['trials']}trials-seed{s['seed']}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
