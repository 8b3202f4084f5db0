"""Trial oversight pages: enrolment by site and stratum over time, the live CONSORT flow, and the
audit-trail viewer with the chain's verification.

Each page calls the trial function the API calls (:mod:`immunostrat.trial.consort`,
:func:`~immunostrat.trial.service.audit_row_view` with :mod:`immunostrat.trial.blinding`,
:func:`~immunostrat.trial.service.verify_audit`). Arms: the CONSORT flow splits by arm for unblinded
roles only (the counting function leaves the split out for the others), and audit rows pass through
the same redaction as ``GET /audit``; nothing else here reads an arm.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import matplotlib.dates as mdates
from fastapi import Request
from matplotlib import rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy import select
from starlette.responses import Response

from immunostrat.api import routes
from immunostrat.api.app import unit_of_work
from immunostrat.trial import blinding, consort, service
from immunostrat.trial.anchor import snapshot
from immunostrat.trial.models import AuditRow
from immunostrat.web.core import (
    ANY,
    PageError,
    _roles,
    add_trial_page,
    page_router,
    render,
    signed_in,
    trial_nav,
    user_of,
)
from immunostrat.web.svgplot import svg_markup

router = page_router()

OVERSIGHT = _roles(routes.OVERSIGHT)
"""The roles of ``GET /audit`` and ``GET /audit/verify`` (the audit viewer)."""
COUNTS_READERS = ANY
"""Enrolment and CONSORT counts: every trial role (counts only; the split by arm for the unblinded)."""
POLL_SECONDS = 10
"""How often the CONSORT page refreshes its flow (htmx polling)."""
PAGE_ROWS = 50
"""Audit rows per page, unless the address asks for another number (``limit``, 1 to 500)."""

add_trial_page("/enrolment", "Enrolment", COUNTS_READERS, rank=20)
add_trial_page("/consort", "CONSORT flow", COUNTS_READERS, rank=21)
add_trial_page("/audit", "Audit trail", OVERSIGHT, rank=30)


def _trial_context(
    request: Request, principal: Any, session: Any, actor: Any, trial_id: int
) -> dict[str, Any]:
    view = blinding.blind_trial_view(
        service.trial_view(session, service.trial_by_id(session, trial_id), actor), actor
    )
    return {"user": user_of(request, principal), "trial": view, "nav": trial_nav(principal, trial_id)}


# ------------------------------------------------------------------------------------- enrolment


@router.get("/trials/{trial_id}/enrolment")
def enrolment_page(request: Request, trial_id: int) -> Response:
    principal = signed_in(request, COUNTS_READERS)
    with unit_of_work(request, principal) as (session, actor):
        context = _trial_context(request, principal, session, actor, trial_id)
        counts = consort.enrolment(session, actor, trial_id)
    context["counts"] = counts
    context["site_svg"] = cumulative_svg(counts["dates"], counts["by_site"], "site", "enrol-site")
    context["stratum_svg"] = cumulative_svg(
        counts["dates"], counts["by_stratum"], "stratum", "enrol-stratum-"
    )
    return render(request, "oversight_enrolment.html", context)


def cumulative_svg(dates: list[str], series: dict[str, list[int]], what: str, prefix: str) -> str | None:
    """Cumulative randomized by ``what`` (site or stratum) over the days with randomizations, one
    line per series; each point's hover text says the series, the day and the count. Drawn once per
    set of counts (they change only when someone is randomized): the figure is kept, keyed by the
    counts themselves, so every reader of the same counts gets the same markup without a redraw."""
    key = tuple((name, tuple(counts)) for name, counts in series.items())
    return _cumulative_svg(tuple(dates), key, what, prefix)


@lru_cache(maxsize=64)
def _cumulative_svg(
    dates: tuple[str, ...], series: tuple[tuple[str, tuple[int, ...]], ...], what: str, prefix: str
) -> str | None:
    """The drawing (a Figure of its own, not pyplot's global state: pages render in a pool of
    threads)."""
    if not dates or not series:
        return None
    days = [date.fromisoformat(d) for d in dates]
    xs = [float(x) for x in mdates.date2num(days)]
    titles: dict[str, str] = {}
    fig = Figure(figsize=(6.5, 3.2), layout="constrained")
    ax = fig.subplots()
    colors = [c["color"] for c in rcParams["axes.prop_cycle"]]
    for i, (name, counts) in enumerate(series):
        color = colors[i % len(colors)]
        # from nought the day before the first randomization, so that every line shows its rise
        ax.step([xs[0] - 1, *xs], [0, *counts], where="post", label=name, linewidth=1.8, color=color)
        for j, (x, day, n) in enumerate(zip(xs, days, counts, strict=True)):
            (point,) = ax.plot([x], [n], marker="o", markersize=5, color=color, linestyle="")
            gid = f"pt{i}-{j}"
            point.set_gid(gid)
            titles[gid] = f"{what} {name}, {day.isoformat()}: {n} randomized"
    ax.set_ylabel("randomized (cumulative)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))  # whole days, never hours
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlim(xs[0] - 1, xs[-1] + 1)
    ax.set_ylim(bottom=0)
    ax.legend(title=what, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return svg_markup(fig, prefix=prefix, label=f"Participants randomized over time by {what}", titles=titles)


# ------------------------------------------------------------------------------------- CONSORT


def _flow(request: Request, trial_id: int) -> tuple[Any, dict[str, Any]]:
    principal = signed_in(request, COUNTS_READERS)
    with unit_of_work(request, principal) as (session, actor):
        context = _trial_context(request, principal, session, actor, trial_id)
        context["flow"] = consort.consort(session, actor, trial_id)
    context["poll_seconds"] = POLL_SECONDS
    return principal, context


@router.get("/trials/{trial_id}/consort")
def consort_page(request: Request, trial_id: int) -> Response:
    _, context = _flow(request, trial_id)
    return render(request, "oversight_consort.html", context)


@router.get("/trials/{trial_id}/consort/flow")
def consort_fragment(request: Request, trial_id: int) -> Response:
    """The flow alone, polled by the page (the same counts and the same blinding as the page)."""
    _, context = _flow(request, trial_id)
    return render(request, "oversight_consort_flow.html", context)


# ------------------------------------------------------------------------------------- audit trail


def _audit_filters(request: Request) -> tuple[str, str, int | None, int]:
    action = request.query_params.get("action", "").strip()[:64]
    actor = request.query_params.get("actor", "").strip()[:64]
    before = request.query_params.get("before", "").strip()
    limit = request.query_params.get("limit", "").strip()
    if before and not (before.isdigit() and len(before) < 19):
        raise PageError(422, "before must be a row number")
    if limit and not (limit.isdigit() and 1 <= int(limit) <= 500):
        raise PageError(422, "limit must be a number of rows from 1 to 500")
    return action, actor, int(before) if before else None, int(limit) if limit else PAGE_ROWS


@router.get("/trials/{trial_id}/audit")
def audit_page(request: Request, trial_id: int) -> Response:
    """The service's audit trail, newest first, :data:`PAGE_ROWS` at a time, filtered by action and
    actor; rows as ``GET /audit`` gives them to this role; the verification as ``GET /audit/verify``."""
    principal = signed_in(request, OVERSIGHT)
    action, who, before, limit = _audit_filters(request)
    with unit_of_work(request, principal) as (session, actor):
        context = _trial_context(request, principal, session, actor, trial_id)
        stmt = select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit + 1)
        if action:
            stmt = stmt.where(AuditRow.action == action)
        if who:
            stmt = stmt.where(AuditRow.actor == who)
        if before is not None:
            stmt = stmt.where(AuditRow.seq < before)
        stored = list(session.scalars(stmt))
        rows = blinding.blind_audit_rows(
            session, [service.audit_row_view(r, actor) for r in stored[:limit]], actor
        )
        actions = sorted(session.scalars(select(AuditRow.action).distinct()))
        actors = sorted(session.scalars(select(AuditRow.actor).distinct()))
    query = {k: v for k, v in (("action", action), ("actor", who)) if v}
    if limit != PAGE_ROWS:
        query["limit"] = str(limit)
    here = f"/web/trials/{trial_id}/audit"
    older = f"{here}?{urlencode({**query, 'before': rows[-1]['seq']})}" if len(stored) > limit else None
    newest = (f"{here}?{urlencode(query)}" if query else here) if before is not None else None
    context.update(
        rows=rows,
        actions=actions,
        actors=actors,
        action=action,
        actor=who,
        older=older,
        newest=newest,
        limit=limit if limit != PAGE_ROWS else None,
    )
    return render(request, "oversight_audit.html", context)


@router.get("/trials/{trial_id}/audit/verify")
def audit_verify_fragment(request: Request, trial_id: int) -> Response:
    """The chain's verification, as ``GET /audit/verify`` makes it (one snapshot of the whole log),
    loaded by the audit page after its rows: over a long trail it takes a while."""
    principal = signed_in(request, OVERSIGHT)
    with unit_of_work(request, principal) as (session, _):
        service.trial_by_id(session, trial_id)
    with snapshot(request.app.state.engine) as session:
        result = service.verify_audit(session)
    verify = {"ok": result.ok, "rows_checked": result.rows_checked, "head_hash": result.head_hash}
    return render(request, "oversight_audit_verify.html", {"verify": verify, "message": str(result)})
