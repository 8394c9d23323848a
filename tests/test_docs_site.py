"""The documentation site builds with `mkdocs build --strict`, every internal link and image of the built site
resolves, and headless Chromium renders the key pages with every image decoded and no request answered 404."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="needs the docs extra (pip install -e '.[docs]'); CI installs it")
# home, a guide, the CLI reference, a results page
RENDERED = ("", "guides/two-eras/", "reference/cli/", "results/camvid-photocopy/")


class _Targets(HTMLParser):
    """Every href/src of a page: (tag, attribute value)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.found.append((tag, value))


def dead_targets(site: Path) -> list[str]:
    """Internal links, images, styles and scripts of the built site whose target file does not exist."""
    dead = []
    for page in sorted(site.rglob("*.html")):
        if page.name == "404.html":  # links from the site root, wherever it is served
            continue
        parser = _Targets()
        parser.feed(page.read_text(errors="replace"))
        for tag, value in parser.found:
            parts = urlsplit(value)
            if parts.scheme or parts.netloc or not parts.path:  # external, or a fragment of this page
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if value.endswith("/") or target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                dead.append(f"{page.relative_to(site)}: <{tag}> {value}")
    return dead


def test_dead_targets_catches_a_broken_image_and_a_dead_link(tmp_path):
    (tmp_path / "guide").mkdir()
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "ok.png").write_bytes(b"png")
    (tmp_path / "index.html").write_text('<a href="guide/">ok</a><a href="gone/">dead</a>'
                                         '<img src="figures/ok.png"><a href="https://example.org/x">ext</a>')
    (tmp_path / "guide" / "index.html").write_text('<img src="../figures/missing.png"><a href="../#top">ok</a>'
                                                   '<a href="#here">ok</a>')
    assert dead_targets(tmp_path) == ["guide/index.html: <img> ../figures/missing.png", "index.html: <a> gone/"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


@needs_mkdocs
def test_site_builds_strict_with_generated_pages(site):
    cli = (site / "reference" / "cli" / "index.html").read_text()
    config = (site / "reference" / "config" / "index.html").read_text()
    # the reference is the live parser and dataclasses: a flag and a key with its bound are there
    assert "--d2-raster" in cli and "segadapt viz features" in cli
    assert "adapt.select" in config and "holdout_loss" in config
    for name in (p.stem for p in (ROOT / "docs" / "results").glob("*.json")):
        assert (site / "results" / name / "index.html").is_file(), f"no results page for {name}"


@needs_mkdocs
def test_every_internal_link_and_image_of_the_site_resolves(site):
    assert dead_targets(site) == []


class _Quiet(http.server.SimpleHTTPRequestHandler):
    failed: list[str] = []

    def log_message(self, *args) -> None:  # the test reads failures, not the log
        pass

    def send_error(self, code, message=None, explain=None):
        _Quiet.failed.append(f"{code} {self.path}")
        super().send_error(code, message, explain)


PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-broken", JSON.stringify(bad));
});</script></body>"""


@needs_mkdocs
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); CI installs it")
def test_key_pages_render_in_headless_chromium(site):
    for page in RENDERED:  # a script that reports, once the page has loaded, the images that did not decode
        html = site / page / "index.html"
        html.write_text(html.read_text().replace("</body>", PROBE, 1))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Quiet.failed.clear()
    try:
        for page in RENDERED:
            url = f"http://127.0.0.1:{server.server_address[1]}/{page}"
            out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
                                  "--dump-dom", url], capture_output=True, text=True, timeout=120)
            m = re.search(r'data-images="(\d+)" data-broken="([^"]*)"', out.stdout)
            assert m, f"{url}: the page did not finish loading: {out.stderr[-1500:]}"
            assert m.group(2) == "[]", f"{url}: images that did not load: {m.group(2)}"
            if page.startswith("results/"):
                assert int(m.group(1)) >= 2, f"{url}: its figures are missing"
    finally:
        server.shutdown()
    assert [f for f in _Quiet.failed if "favicon" not in f] == []


def test_a_new_benchmark_gets_a_results_page(tmp_path, monkeypatch):
    """A results JSON without notes or table still gets a page (its values as tables); a table's image that was
    not kept reads so instead of a broken link."""
    sys.path.insert(0, str(ROOT / "docs" / "_gen"))
    import results_pages

    (tmp_path / "newbench.json").write_text('{"wall_s": 3.5, "environment": {"torch": "2.13"}, "speed": 1.25, '
                                            '"rows": [{"method": "a", "miou": 0.5}, {"method": "b", "miou": 0.25}]}')
    (tmp_path / "tabled.json").write_text("{}")
    (tmp_path / "tabled.md").write_text("# tabled\n\n| a |\n| --- |\n| 1 |\n\n![plot](plot-that-is-gone.png)\n")
    pages = results_pages.pages(tmp_path)
    assert "| `speed` | 1.25 |" in pages["newbench"] and "| 1 | b | 0.25 |" in pages["newbench"]
    assert "torch 2.13" in pages["newbench"] and "No notes were written" in pages["newbench"]
    assert "## tabled" in pages["tabled"] and "*(plot: not kept)*" in pages["tabled"]
    assert "plot-that-is-gone.png" not in pages["tabled"]
