"""The report as a list of blocks rendered twice: Markdown (figures linked) and self-contained HTML
(figures inlined as base64 PNG). No dependencies beyond pandas."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass
class Block:
    kind: str  # h1 | h2 | h3 | p | alert | list | table | figure | pre
    content: object
    caption: str = ""


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if v != 0 and (abs(v) < 10 ** -digits):
            return f"{v:.1e}"
        return f"{v:.{digits}f}"
    return str(v)


def _table_md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + str(b.content))
        elif b.kind == "p":
            out.append(str(b.content))
        elif b.kind == "alert":
            out.append("> **⚠ " + str(b.content) + "**")
        elif b.kind == "list":
            out.append("\n".join(f"- {x}" for x in b.content) if b.content else "- (none)")
        elif b.kind == "table":
            out.append((f"*{b.caption}*\n\n" if b.caption else "") + _table_md(b.content))
        elif b.kind == "figure":
            rel = Path(b.content).as_posix()
            out.append(f"![{Path(rel).stem}]({rel})\n\n*{b.caption}*")
        elif b.kind == "pre":
            out.append("```\n" + str(b.content) + "\n```")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.alert{background:#fff3cd;border:2px solid #d39e00;padding:.7em 1em;margin:.8em 0;font-weight:600}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:.9em;color:#555}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}.caption{font-style:italic;color:#555}
"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(str(b.content))}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{html.escape(str(b.content))}</p>")
        elif b.kind == "alert":
            parts.append(f"<div class='alert'>⚠ {html.escape(str(b.content))}</div>")
        elif b.kind == "list":
            items = "".join(f"<li>{html.escape(str(x))}</li>" for x in b.content) or "<li>(none)</li>"
            parts.append(f"<ul>{items}</ul>")
        elif b.kind == "table":
            cap = f"<p class='caption'>{html.escape(b.caption)}</p>" if b.caption else ""
            parts.append(cap + _table_html(b.content))
        elif b.kind == "figure":
            data = base64.b64encode((folder / b.content).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(Path(b.content).stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif b.kind == "pre":
            parts.append(f"<pre>{html.escape(str(b.content))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(blocks: list[Block], folder: Path, title: str) -> list[Path]:
    md, ht = folder / "report.md", folder / "report.html"
    md.write_text(to_markdown(blocks), encoding="utf-8")
    ht.write_text(to_html(blocks, folder, title), encoding="utf-8")
    return [md, ht]
