"""Checks every report passes before it is called complete: it opens from a USB stick with
no network, so it may name no outside address (no CDN script, font or image), and every
figure is inlined (``data:`` URIs)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from ..errors import InputError

__all__ = ["references"]

# attributes that make a browser fetch (or navigate to) what they name
_URL_ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background",
              "xlink:href", "cite", "manifest", "ping"}
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.I)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self._style = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in _URL_ATTRS:
                parts = value.split(",") if name == "srcset" else [value]
                self.found += [(tag, name, p.strip().split(" ")[0]) for p in parts if p.strip()]
            elif name == "style":
                self._css(tag, value)
            elif tag == "meta" and name == "content" and re.search(r"url\s*=", value, re.I):
                self.found.append((tag, "content", value.split("=", 1)[1].strip()))
        self._style = tag == "style"

    def handle_endtag(self, tag):
        self._style = False

    def handle_data(self, data):
        if self._style:
            self._css("style", data)

    def _css(self, tag, text):
        for a, b in _CSS_URL.findall(text):
            self.found.append((tag, "css", a or b))


def _kind(url: str) -> str:
    u = url.strip()
    if u.startswith("#") or not u:
        return "anchor"
    if u.lower().startswith("data:"):
        return "inline"
    parsed = urlparse(u)
    if parsed.scheme in ("javascript", "vbscript"):
        return "script"
    if parsed.netloc or parsed.scheme not in ("", "file"):  # "//host/x" has a netloc too
        return "remote"
    return "file"


def references(html) -> pd.DataFrame:
    """Every address an HTML page (a path or its text) makes a browser fetch or follow.

    Returns ``tag, attribute, url, kind``: kind ``remote`` (another host: must not occur in a
    report), ``file`` (a path beside the page: only links to the report's own ``data/``),
    ``script`` (a ``javascript:`` URL), ``inline`` (``data:``) or ``anchor`` (``#...``).
    """
    if isinstance(html, Path) or (isinstance(html, str) and len(html) < 4096 and "<" not in html):
        path = Path(html)
        if not path.is_file():
            raise InputError(f"html={path}: no such file")
        html = path.read_text(errors="replace")
    parser = _Refs()
    parser.feed(str(html))
    parser.close()
    out = pd.DataFrame(parser.found, columns=["tag", "attribute", "url"])
    out["kind"] = [_kind(u) for u in out["url"]]
    return out
