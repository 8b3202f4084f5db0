"""The web application: server-rendered pages (Jinja2, htmx from /web/static) under /web, mounted by
the API app; pages call the same trial functions as the API and hold no rules of their own."""

from fastapi import APIRouter

from immunostrat.web import admin, bedside, cohorts, insilico, oversight, pages, records

router = APIRouter()
for _area in (pages, bedside, oversight, records, admin, cohorts, insilico):
    router.include_router(_area.router)
router.include_router(pages.fallback)  # last: any other /web address is a page

__all__ = ["router"]
