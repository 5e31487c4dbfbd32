"""Every HTML page the repo writes opens offline and renders (tests/browser.py).

* the checker itself: remote references are found in tags but not in script text; a blank or
  CDN-dependent page is reported as such by a real headless Chromium;
* the circuitsvis page of characterize_head.py renders offline (a canvas is drawn);
* every HTML file present under figures/ is self-contained (and, with L1H5_BROWSER_ALL=1,
  rendered in Chromium too: slow, so off by default).

The interactive clustering map is rendered in tests/test_clustering.py (it needs that run).
Browser tests skip when Chromium is absent: ``apt-get install -y chromium``.
"""

import os
import re

import numpy as np
import pytest

from browser import check_page, find_chromium, image_stats, network_references
from common.outputs import FIGURES

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")


def test_network_references():
    page = """<html><head>
    <script src="https://cdn.example.org/lib.js"></script>
    <link rel="stylesheet" href="//fonts.example.org/a.css">
    <style>@import url("https://x.example.org/b.css"); .a { background: url(data:image/png;base64,AAA) }</style>
    <script src="local.js"></script>
    </head><body><img src="http://example.org/i.png"><img src="data:image/png;base64,AAAA">
    <script>var s = '<script src="https://in-a-string.example.org/x.js">'; fetch_later("https://api.example.org");</script>
    <a href="https://example.org/docs">a plain link is not a resource</a>
    </body></html>"""
    refs = network_references(page)
    assert len(refs) == 4
    joined = " ".join(refs)
    for host in ("cdn.example.org", "fonts.example.org", "x.example.org", "example.org/i.png"):
        assert host in joined
    assert "in-a-string" not in joined and "api.example.org" not in joined


def test_image_stats(tmp_path):
    from PIL import Image

    blank = np.full((50, 80, 3), 255, dtype=np.uint8)
    Image.fromarray(blank).save(tmp_path / "blank.png")
    s = image_stats(tmp_path / "blank.png")
    assert s["non_background_fraction"] == 0 and s["n_colours"] == 1
    drawn = blank.copy()
    drawn[10:30, 10:40] = [200, 30, 30]
    drawn[35:45, 50:70] = [30, 30, 200]
    Image.fromarray(drawn).save(tmp_path / "drawn.png")
    s = image_stats(tmp_path / "drawn.png")
    assert abs(s["non_background_fraction"] - (600 + 200) / 4000) < 1e-9 and s["n_colours"] == 3


@needs_chromium
def test_checker_flags_blank_and_cdn_pages(tmp_path):
    (tmp_path / "blank.html").write_text("<html><body></body></html>")
    page = check_page(tmp_path / "blank.html", width=400, height=300, budget_ms=500)
    assert not page.ok and any("blank" in p for p in page.problems)
    # a page that draws only through a CDN library renders nothing offline, and is flagged twice
    (tmp_path / "cdn.html").write_text(
        '<html><head><script src="https://cdn.plot.ly/plotly-2.0.0.min.js"></script></head><body>'
        '<div id="a"></div><script>Plotly.newPlot("a", [{x: [1, 2], y: [3, 1]}]);</script></body></html>')
    page = check_page(tmp_path / "cdn.html", width=400, height=300, budget_ms=1500)
    assert any("remote" in p for p in page.problems) and any("blank" in p for p in page.problems)
    (tmp_path / "drawn.html").write_text(
        '<html><body><canvas id="c" width="300" height="200"></canvas><script>var x = document.getElementById("c")'
        '.getContext("2d"); x.fillStyle = "#c33"; x.fillRect(10, 10, 200, 100); x.fillStyle = "#33c";'
        ' x.fillRect(50, 120, 100, 60);</script></body></html>')
    page = check_page(tmp_path / "drawn.html", width=400, height=300, budget_ms=500)
    assert page.ok, page.problems


@needs_chromium
def test_circuitsvis_page_renders_offline(tmp_path, planted_model):
    from characterize_head import attention_page
    from common.prompts import category_prompts

    tokens = category_prompts(planted_model.tokenizer, 1, 12, seed=0).tokens[0]
    path = tmp_path / "attention_L1H5.html"
    path.write_text(attention_page(planted_model, tokens, 1, 5))
    page = check_page(path, tmp_path / "attention.png", want_dom=True, min_fraction=0.1)
    assert page.ok, page.problems
    assert re.search(r"<canvas[^>]*role=\"img\"", page.dom)  # circuitsvis drew its heatmap


def _pages_under_figures():
    return sorted(FIGURES.rglob("*.html")) if FIGURES.exists() else []


@pytest.mark.parametrize("path", _pages_under_figures() or [None], ids=lambda p: str(p.relative_to(FIGURES)) if p else "none")
def test_pages_under_figures_are_self_contained(path):
    if path is None:
        pytest.skip("no HTML page under figures/ yet")
    assert network_references(path.read_text(errors="replace")) == [], path
    if os.environ.get("L1H5_BROWSER_ALL") == "1":
        if find_chromium() is None:
            pytest.skip("chromium not installed")
        png = path.parent / f".{path.stem}.browser-check.png"
        try:
            page = check_page(path, png)
        finally:
            png.unlink(missing_ok=True)
        assert page.ok, (path, page.problems)
