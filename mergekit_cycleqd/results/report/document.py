"""A tiny document model rendered to both HTML and Markdown.

The report is assembled once as a list of blocks, then written twice, so the
HTML page and the Markdown file can never drift apart. The HTML page embeds
its images as data URIs (one file to mail or archive); the Markdown file links
the same images saved beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Heading", "Paragraph", "Table", "Image", "Code", "Block", "to_html", "to_markdown"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    align_right_from: int = 1  # numeric columns start here


@dataclass(frozen=True)
class Image:
    filename: str
    alt: str
    data: bytes
    mime: str = "image/png"


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


Block = Heading | Paragraph | Table | Image | Code

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 1em 0; }
pre { background: #f6f8fa; padding: 1em; overflow-x: auto; }
"""


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{html.escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
        body = []
        for row in block.rows:
            cells = "".join(
                f'<td class="num">{html.escape(c)}</td>'
                if i >= block.align_right_from
                else f"<td>{html.escape(c)}</td>"
                for i, c in enumerate(row)
            )
            body.append(f"<tr>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if isinstance(block, Image):
        data = base64.b64encode(block.data).decode("ascii")
        return (
            f'<img src="data:{block.mime};base64,{data}" alt="{html.escape(block.alt)}" '
            f'data-file="{html.escape(block.filename)}">'
        )
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    raise TypeError(f"unknown block {block!r}")


def to_html(title: str, blocks: list[Block]) -> str:
    """A self-contained HTML page (inline CSS, images as data URIs, no scripts)."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.headers) + " |"]
        lines.append(
            "|"
            + "".join(
                "---:|" if i >= block.align_right_from else "---|"
                for i in range(len(block.headers))
            )
        )
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Image):
        return f"![{block.alt}]({block.filename})"
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return f"{fence}{block.language}\n{block.text.rstrip()}\n{fence}"
    raise TypeError(f"unknown block {block!r}")


def to_markdown(title: str, blocks: list[Block]) -> str:
    """Markdown; images are referenced by file name (write them beside it)."""
    return "\n\n".join([f"# {title}", *(_md_block(b) for b in blocks)]) + "\n"


def write_images(blocks: list[Block], folder: Path) -> list[Path]:
    """Save every image block under ``folder`` (for the Markdown file)."""
    paths = []
    for block in blocks:
        if isinstance(block, Image):
            path = Path(folder) / block.filename
            path.write_bytes(block.data)
            paths.append(path)
    return paths
