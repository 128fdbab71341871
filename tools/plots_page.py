"""The plots of a pull request against its base, as one HTML page that needs no network.

    python -m tools.plots_page --out plots.html                 # the workspace's plots
    python -m tools.plots_page --out plots.html origin/main     # workspace against a rev
    python -m tools.plots_page --out plots.html main HEAD       # two revisions

`dvc plots diff` writes Vega-Lite specs with their data inlined; DVC's own HTML page
loads Vega from a CDN, so opened offline (a CI artifact, an air-gapped laptop) it shows
blank plots. Here every Vega-Lite spec is rendered to SVG on this machine with
vl-convert (Vega's renderer compiled into a Python wheel, no browser, no network), the
images (metrics/figures) are embedded as data: URIs, and a Content-Security-Policy lets
the page load nothing from anywhere. A plot a revision cannot provide (a cached curve
not pulled, a column a run does not have) is listed with DVC's reason, not dropped.
"""

from __future__ import annotations

import argparse
import base64
import html
import mimetypes
import tempfile
from pathlib import Path

import vl_convert

from tools import run_tool
from tools.repo import dvc_json

# The page may load nothing: no script at all, images only from data: URIs, only its
# own inline style.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
section { margin-bottom: 2.5em; }
h2 { font-size: 1.1em; margin-bottom: .3em; }
.revs { color: #666; font-size: .9em; margin: 0 0 .5em; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { max-width: 640px; }
ul.errors { color: #8a3000; }
"""


def dvc_plots_json(revs: list[str], out_dir: Path, cwd: Path) -> dict:
    """`dvc plots diff REV... --json`: {"data": {name: [entries]}, "errors": [...]}"""
    return dvc_json(["plots", "diff", *revs, "--json", "-o", str(out_dir)], cwd,
                    "plots-page")


def data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render(entry: dict) -> str:
    """One entry of `dvc plots --json` as self-contained HTML."""
    if entry["type"] == "vega":
        return f"<figure>{vl_convert.vegalite_to_svg(entry['content'])}</figure>"
    if entry["type"] == "image":
        revs = html.escape(", ".join(entry.get("revisions", [])))
        return (f'<figure><img alt="{revs}" src="{data_uri(Path(entry["url"]))}">'
                f"<figcaption>{revs}</figcaption></figure>")
    raise ValueError(f"unknown plot type {entry['type']!r}")


def page(plots: dict, title: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for name, entries in plots.get("data", {}).items():
        revs = sorted({r for e in entries for r in e.get("revisions", [])})
        parts.append(f'<section><h2>{html.escape(name)}</h2>'
                     f'<p class="revs">{html.escape(", ".join(revs))}</p>')
        parts += [render(e) for e in entries] or ["<p>Nothing to show: see below.</p>"]
        parts.append("</section>")
    errors = plots.get("errors") or []
    if errors:
        parts.append("<section><h2>Not shown</h2><ul class=\"errors\">")
        parts += [f"<li>{html.escape(error_line(e))}</li>" for e in errors]
        parts.append("</ul></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def error_line(error: dict) -> str:
    where = ", ".join(str(error[k]) for k in ("name", "rev", "source") if error.get(k))
    return f"{where}: {error.get('msg') or error.get('type')}"


def compared(revs: list[str]) -> str:
    """What `dvc plots diff REVS` compares, in words."""
    if not revs:
        return "workspace"
    if len(revs) == 1:
        return f"workspace against {revs[0]}"
    return f"{', '.join(revs[1:])} against {revs[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.plots_page",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="*", help="revisions to compare (none: the workspace)")
    parser.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="plots-page-") as tmp:
        plots = dvc_plots_json(args.revs, Path(tmp), args.repo)
        title = args.title or "Plots: " + compared(args.revs)
        text = page(plots, title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    shown = sum(len(v) for v in plots.get("data", {}).values())
    print(f"{args.out}: {shown} plots, {len(plots.get('errors') or [])} not shown")
    return 0


if __name__ == "__main__":
    run_tool(main)
