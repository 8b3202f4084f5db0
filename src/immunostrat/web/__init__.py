"""The web application: server-rendered pages (Jinja2, htmx from /web/static) under /web, mounted by
the API app; pages call the same trial functions as the API and hold no rules of their own."""

from immunostrat.web.pages import router

__all__ = ["router"]
