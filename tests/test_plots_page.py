"""The pull-request report's plots page: every plot `dvc plots diff` has, rendered on
this machine, in one HTML file that loads nothing from anywhere."""

import json
import subprocess
from html.parser import HTMLParser

import pytest

from tests.support import PY
from tools import ROOT
from tools.repo import run

pytestmark = pytest.mark.e2e

# Elements that fetch or run something; none may appear
FETCHING = {"script", "link", "iframe", "object", "embed", "frame", "base", "audio", "video",
            "source", "track", "use"}
URL_ATTRS = {"src", "href", "xlink:href", "srcset", "action", "data", "poster", "background"}


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.h2: list[str] = []
        self.text: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2.append(data)


def test_plots_page_holds_every_plot_and_loads_nothing(committed_repo, tmp_path):
    repo, env, _ = committed_repo
    # a second revision to compare: the LeNet's predictions change in the workspace
    csv = repo / "metrics/confusion/lenet.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:1] + lines[1:][::-1]) + "\n")
    out = tmp_path / "report" / "plots.html"
    proc = subprocess.run([PY, "-m", "tools.plots_page", "--repo", str(repo), "--out", str(out),
                           "HEAD"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo, env).stdout)["data"]
    page = Page()
    page.feed(out.read_text())
    tags = [tag for tag, _ in page.tags]
    # every plot, under its own heading: each Vega-Lite spec as inline SVG, each image
    # as a data: URI
    assert set(page.h2) == set(plots)
    vega = sum(e["type"] == "vega" for v in plots.values() for e in v)
    images = sum(e["type"] == "image" for v in plots.values() for e in v)
    assert vega >= 5 and images >= 2
    assert tags.count("svg") >= vega  # a Vega-Lite chart may nest svg elements, never fewer
    assert sum(1 for t, a in page.tags if t == "svg" and a.get("class") == "marks") == vega
    assert sum(1 for t, a in page.tags if t == "img"
               and a.get("src", "").startswith("data:image/png;base64,")) == images
    assert "Confusion, normalized (LeNet-5)" in page.h2
    assert "HEAD, workspace" in " ".join(page.text)

    # nothing that loads or runs anything, no URL but data: and in-page anchors
    assert not FETCHING & set(tags), FETCHING & set(tags)
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in URL_ATTRS:
                assert value.startswith(("data:", "#")), (tag, name, value[:80])
            assert not name.startswith("on"), (tag, name)  # no inline script either
    styles = " ".join(a.get("style", "") for _, a in page.tags) + " ".join(page.text)
    assert "@import" not in styles and "url(http" not in styles
    csp = [a for t, a in page.tags if t == "meta" and a.get("http-equiv")]
    assert csp and csp[0]["content"].startswith("default-src 'none'")
