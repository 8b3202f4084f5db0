"""Matplotlib figures as inline SVG markup a page can carry under its Content-Security-Policy.

Matplotlib writes ``style="..."`` attributes and a ``<style>`` element, both refused by a policy
without ``'unsafe-inline'``; here they become SVG presentation attributes (``fill="..."``), which
no policy governs. Every ``id`` is prefixed so that several figures share a page, and artists given
a ``gid`` get a ``<title>`` child: the browser shows it on hover, with no script.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping

from matplotlib.figure import Figure

_STYLE = re.compile(r' style="([^"]*)"')
_REFERENCE = re.compile(r'( id="|href="#|url\(#)')
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def _attributes(match: re.Match[str]) -> str:
    out = []
    for part in match.group(1).split(";"):
        name, sep, value = part.partition(":")
        name, value = name.strip(), value.strip()
        if sep and _SAFE.fullmatch(name) and '"' not in value:
            out.append(f' {name}="{value}"')
    return "".join(out)


def svg_markup(fig: Figure, *, prefix: str, label: str, titles: Mapping[str, str] | None = None) -> str:
    """The figure as an ``<svg>`` element for a page: scales to its container's width, has
    ``role="img"`` and ``aria-label`` (give the numbers in a table beside it as well), and a hover
    ``<title>`` on each artist whose gid is a key of ``titles``."""
    if not _SAFE.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r}: letters, digits, '_', '.', '-' only")
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r"<style[^>]*>.*?</style>\s*", "", svg, flags=re.S)
    svg = _STYLE.sub(_attributes, svg)
    # one pass each: every id and every reference to one gets the prefix
    svg = _REFERENCE.sub(lambda m: f"{m.group(1)}{prefix}-", svg)
    hover = dict(titles or {})

    def titled(match: re.Match[str]) -> str:
        text = hover.get(match.group(1))
        if text is None:
            return match.group(0)
        return f'<g id="{prefix}-{match.group(1)}" pointer-events="all"><title>{html.escape(text)}</title>'

    svg = re.sub(rf'<g id="{re.escape(prefix)}-([^"]+)">', titled, svg)
    head, rest = svg.split(">", 1)
    head = re.sub(r' (width|height)="[^"]*"', "", head)
    head += (
        f' width="100%" role="img" aria-label="{html.escape(label)}"'
        ' stroke-linejoin="round" stroke-linecap="butt" class="plot"'
    )
    return f"{head}>{rest}"
