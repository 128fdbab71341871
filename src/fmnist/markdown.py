"""The markdown that the report, the model card and the README's generated tables share:
one table builder, the training recipe as rows, and the card's template. No torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"
# What could open a link, an emphasis, a code span, an HTML tag or a table cell
_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md(value: object) -> str:
    """A value read from a side file (meta.json, metrics) as inline Markdown text: one
    line (every run of whitespace, newlines included, one space) and each character that
    could change the document's structure escaped. The one rule for prose and tables."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def code(value: object) -> str:
    """A value read from a side file inside a code block: one line (a newline would
    start a command of its own) and no backtick (which could close the fence)."""
    return " ".join(str(value).replace("`", "'").split())


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default:
    the first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]

    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return "\n".join([line(header), "|" + "|".join(sep) + "|", *map(line, rows)])


PRECISIONS = {"none": "fp32", "bf16": "bf16 mixed", "fp16": "fp16 mixed"}


def recipe_rows(p: dict[str, Any], meta: dict[str, Any] | None = None) -> list[list[str]]:
    """The training params that ran, as the report and the model card list them; with
    the model's ``meta``, also where and how it ran (precision, device, numerics)."""
    aug = p["augment"]
    erase = aug.get("erase", 0.0)
    parts = [f"random crop (pad {aug['crop_padding']})" if aug["crop_padding"] else "",
             "horizontal flip" if aug["hflip"] else "",
             f"random erasing (p {erase:g})" if erase else ""]
    rows = [
        ["Optimizer", p["optimizer"]],
        ["Learning rate", f"{p['lr']:g}" + (f" (peak, {p['schedule']})"
                                            if p["schedule"] != "constant" else "")],
        ["Weight decay", f"{p['weight_decay']:g}" + (" (L2 in the gradient)"
                                                     if p["optimizer"] == "adam" else "")],
        ["Batch size", str(p["batch_size"])],
        ["Epochs", str(p["epochs"])],
        ["Label smoothing", f"{p['label_smoothing']:g}"],
        ["Weight averaging", f"EMA, decay {p['ema']:g} per step" if p.get("ema") else "none"],
        ["Input normalization", "train mean/std" if p["normalize"] else "none (x / 255)"],
        ["Augmentation", ", ".join(s for s in parts if s) or "none"],
        ["Seed", str(p["seed"])],
    ]
    if p["optimizer"] == "sgd":
        rows.insert(1, ["Momentum", f"{p['momentum']:g}"])
    if meta is not None:
        numerics = meta.get("numerics") or {}
        rows += [["Precision", PRECISIONS.get(p["amp"], p["amp"])],
                 ["Device", f"{meta.get('device', p['device'])}, "
                            f"{meta.get('world_size', 1)} process(es), {p['threads']} threads"],
                 ["Numerics", f"{numerics.get('mode', p.get('numerics', 'native'))}"
                              + (f" (tier {numerics['tier']})" if numerics.get("tier") else "")]]
    return [[name, md(value)] for name, value in rows]


def render(template: str, **data: Any) -> str:
    """``templates/TEMPLATE`` filled with ``data`` (Jinja2, undefined names an error)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - markdown, not HTML
    env.filters["f4"] = lambda x: f"{x:.4f}"
    env.filters["md"], env.filters["code"] = md, code
    return env.get_template(template).render(**data)
