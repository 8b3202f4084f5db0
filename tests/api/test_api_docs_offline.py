"""The API docs work without internet: a real browser, with every request that leaves the machine
refused, renders Swagger UI at /docs and ReDoc at /redoc from assets the app serves itself."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from apiserver import launch_server, wait_ready

from immunostrat.analysis.report import CHROMIUM_ARGS, find_chromium

pytestmark = pytest.mark.browser

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
URL = re.compile(r"""https?://[^\s"'<>)]+""")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("docs-offline")
    proc, base = launch_server(f"sqlite:///{folder / 'docs.db'}", folder / "server.log")
    try:
        wait_ready(proc, base, folder / "server.log")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("page_path", ["/docs", "/redoc"])
def test_docs_html_references_only_the_app(base_url: str, page_path: str) -> None:
    response = httpx.get(f"{base_url}{page_path}", timeout=30)
    assert response.status_code == 200
    assert "img-src 'self'" in response.headers["content-security-policy"]
    html = response.text
    outside = [url for url in URL.findall(html) if not url.startswith(base_url)]
    assert outside == [], f"{page_path} references {outside}"
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
    assert any(a.endswith(".js") for a in assets), html
    for asset in assets:
        assert asset.startswith("/"), asset
        served = httpx.get(f"{base_url}{asset}", timeout=30)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset


def _blocked_browser_page(
    base_url: str, page_path: str, wait_for: str, tmp_path: Path
) -> tuple[str, list[str]]:
    """Open ``page_path`` in headless Chromium with every non-loopback request aborted; returns the
    rendered text once ``wait_for`` is visible, and the requests that were refused."""
    from playwright.sync_api import Route, sync_playwright

    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium executable found (set IMMUNOSTRAT_CHROMIUM or install chromium)")
    refused: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", only_loopback)
            page = context.new_page()
            page.goto(f"{base_url}{page_path}", wait_until="load")
            page.get_by_text(wait_for).first.wait_for(state="visible", timeout=30_000)
            text = page.inner_text("body")
        finally:
            browser.close()
    return text, refused


def test_swagger_ui_renders_offline(base_url: str, tmp_path: Path) -> None:
    text, refused = _blocked_browser_page(base_url, "/docs", "/classify", tmp_path)
    assert refused == []
    for operation in ("/classify", "/score", "/token", "/cds-services"):
        assert operation in text


def test_redoc_renders_offline(base_url: str, tmp_path: Path) -> None:
    title = httpx.get(f"{base_url}/openapi.json", timeout=30).json()["info"]["title"]
    text, refused = _blocked_browser_page(base_url, "/redoc", title, tmp_path)
    assert refused == []
    assert f"{title} (" in text  # ReDoc's heading: title (version)
    for operation in ("/classify", "/score", "/token", "/cds-services"):
        assert operation in text
