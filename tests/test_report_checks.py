"""The self-containedness check of reports: every way a page can make a browser fetch an
outside address is found (hand-made pages), and an inlined page is clean."""

import base64

from bioviz.report.checks import references

PAGE = """<!doctype html><html><head>
<link rel="stylesheet" href="https://cdn.example.org/x.css">
<script src="//cdn.example.org/app.js"></script>
<style>body { background: url('http://evil.example/bg.png') } @import "https://fonts.example/f.css";</style>
<meta http-equiv="refresh" content="0; url=https://elsewhere.example/">
</head><body>
<img src="data:image/png;base64,iVBORw0KGgo=" srcset="a.png 1x, https://img.example/b.png 2x">
<a href="#candidates">jump</a> <a href="data/candidates.tsv">table</a>
<a href="javascript:alert(1)">x</a>
<div style="background-image:url(https://img.example/c.png)"></div>
<svg><image xlink:href="https://img.example/d.svg"/></svg>
</body></html>"""


def test_every_outside_address_is_found_by_hand():
    refs = references(PAGE)
    remote = set(refs.loc[refs.kind == "remote", "url"])
    assert remote == {"https://cdn.example.org/x.css", "//cdn.example.org/app.js", "http://evil.example/bg.png",
                      "https://fonts.example/f.css", "https://elsewhere.example/", "https://img.example/b.png",
                      "https://img.example/c.png", "https://img.example/d.svg"}
    assert set(refs.loc[refs.kind == "file", "url"]) == {"a.png", "data/candidates.tsv"}
    assert refs.loc[refs.kind == "script", "url"].tolist() == ["javascript:alert(1)"]
    assert set(refs.kind) == {"remote", "file", "script", "inline", "anchor"}


def test_an_inlined_page_has_no_outside_reference(tmp_path):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    page = tmp_path / "report.html"
    page.write_text(f'<html><style>h1 {{ color: #333 }}</style><img src="data:image/png;base64,{png}">'
                    '<a href="#top">top</a></html>')
    refs = references(page)
    assert set(refs.kind) == {"inline", "anchor"} and not (refs.kind == "remote").any()
