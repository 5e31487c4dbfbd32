"""Check that an HTML page of this repo opens offline and renders, in a real headless browser.

Every HTML output (the clustering map, the circuitsvis page, any gallery) must open from disk
with no network. Two checks serve that:

* :func:`network_references` parses the page (not the text inside ``<script>``, where a bundled
  library may mention URLs it never fetches) and lists every ``src``/``href`` of a script,
  stylesheet, image, frame or CSS ``@import`` that points to ``http(s)://`` or ``//``;
* :func:`check_page` opens the file in headless Chromium with every network request sent to a
  dead proxy, takes a screenshot and (optionally, in the same run) the DOM after scripts ran, and measures how much
  of the screenshot differs from its background colour. A page whose script failed, or which
  needed a CDN, is blank or nearly so.

Chromium is the Debian package (``apt-get install -y chromium``); :func:`find_chromium` returns
None when it is absent, and tests skip. Set ``$L1H5_CHROMIUM`` to use another binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Flags for a quiet, reproducible, offline run: no sandbox (containers run as root), no GPU,
# no background traffic, and a dead proxy so any network fetch fails instead of succeeding.
HEADLESS_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_chromium() -> str | None:
    """Path of a Chromium binary ($L1H5_CHROMIUM first), or None."""
    env = os.environ.get("L1H5_CHROMIUM")
    if env:
        return env if Path(env).exists() or shutil.which(env) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _RefParser(HTMLParser):
    """Collects external references from tag attributes and <style> blocks."""

    ATTRS = {"script": ("src",), "link": ("href",), "img": ("src", "srcset"), "iframe": ("src",),
             "embed": ("src",), "object": ("data",), "source": ("src", "srcset"), "audio": ("src",),
             "video": ("src", "poster")}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        names = self.ATTRS.get(tag, ())
        for k, v in attrs:
            if k in names and v and _is_remote(v):
                self.refs.append(f"<{tag} {k}={v}>")
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            for m in re.finditer(r"""(?:@import\s+|url\()\s*['"]?((?:https?:)?//[^'")\s]+)""", data):
                self.refs.append(f"css {m.group(1)}")


def _is_remote(url: str) -> bool:
    return bool(re.match(r"\s*(https?:)?//", url, re.I))


def network_references(html: str) -> list[str]:
    """External resources the page would load (script/link/img/... attributes, CSS imports)."""
    p = _RefParser()
    p.feed(html)
    p.close()
    return p.refs


def _run_chromium(html_path: Path, extra: list[str], width: int, height: int, budget_ms: int,
                  timeout: float, fragment: str | None = None) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium (or set $L1H5_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="l1h5-chromium-") as profile:
        cmd = [exe, *HEADLESS_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--virtual-time-budget={budget_ms}", *extra,
               Path(html_path).resolve().as_uri() + (f"#{fragment}" if fragment else "")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1280, height: int = 900,
               budget_ms: int = 8000, timeout: float = 120, want_dom: bool = False,
               fragment: str | None = None) -> str | None:
    """Render ``html_path`` offline and write a PNG screenshot.

    With ``want_dom`` the same run also returns the DOM after the page's scripts ran
    (``--dump-dom``), so one browser start serves both checks. ``fragment`` is appended to the
    file URL after ``#`` (pages may read it, e.g. to pre-fill a search).
    """
    png_path = Path(png_path).resolve()
    png_path.unlink(missing_ok=True)
    extra = [f"--screenshot={png_path}"] + (["--dump-dom"] if want_dom else [])
    proc = _run_chromium(Path(html_path), extra, width, height, budget_ms, timeout, fragment)
    if not png_path.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    if want_dom:
        if not proc.stdout:
            raise RuntimeError(f"chromium --dump-dom printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout
    return None


def image_stats(png_path: str | Path, tol: int = 8) -> dict:
    """Background colour (the most common), fraction of pixels differing from it by more than
    ``tol`` in any channel, and the number of distinct colours (quantised to 4 bits)."""
    from PIL import Image

    img = np.asarray(Image.open(png_path).convert("RGB")).astype(np.int16)
    flat = img.reshape(-1, 3)
    q = (flat >> 4).astype(np.int32)
    codes = (q[:, 0] << 8) | (q[:, 1] << 4) | q[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    bg_code = values[counts.argmax()]
    bg = flat[codes == bg_code].mean(0)
    differs = (np.abs(flat - bg) > tol).any(1)
    return {
        "width": img.shape[1], "height": img.shape[0],
        "background": [int(round(c)) for c in bg],
        "non_background_fraction": float(differs.mean()),
        "n_colours": int(len(values)),
    }


@dataclass
class PageCheck:
    """What a rendered page looked like: screenshot stats, remote references, the DOM."""

    html: Path
    png: Path
    stats: dict
    remote_refs: list[str]
    dom: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_page(html_path: str | Path, png_path: str | Path | None = None, *, min_fraction: float = 0.02,
               min_colours: int = 3, want_dom: bool = False, width: int = 1280, height: int = 900,
               budget_ms: int = 8000, fragment: str | None = None) -> PageCheck:
    """Screenshot ``html_path`` offline and decide whether it rendered.

    A page fails when it references remote resources, or when less than ``min_fraction`` of the
    screenshot differs from the background, or it has fewer than ``min_colours`` colours (a lone
    heading on white is not a rendered figure: set the thresholds for what the page should show).
    """
    html_path = Path(html_path)
    png_path = Path(png_path) if png_path else html_path.with_suffix(".screenshot.png")
    refs = network_references(html_path.read_text(errors="replace"))
    dom = screenshot(html_path, png_path, width, height, budget_ms, want_dom=want_dom, fragment=fragment)
    stats = image_stats(png_path)
    problems = []
    if refs:
        problems.append(f"remote references: {refs[:5]}")
    if stats["non_background_fraction"] < min_fraction:
        problems.append(f"blank: only {stats['non_background_fraction']:.4f} of pixels differ from the background")
    if stats["n_colours"] < min_colours:
        problems.append(f"blank: only {stats['n_colours']} colours")
    return PageCheck(html_path, png_path, stats, refs, dom, problems)
