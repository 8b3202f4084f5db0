"""The web application: server-rendered pages (Jinja2, htmx from /web/static) under /web, mounted by
the API app; pages call the same trial functions as the API and hold no rules of their own."""

from fastapi import APIRouter

from immunostrat.web import bedside, pages

router = APIRouter()
for _area in (pages.router, bedside.router):
    router.include_router(_area)
router.include_router(pages.fallback)  # last: any other /web address is a page

__all__ = ["router"]
