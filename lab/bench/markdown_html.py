"""HTML from the small Markdown subset the report writes: headings, pipe tables, bullet
lists and paragraphs with **bold** and `code`. No dependency, nothing else supported."""

from __future__ import annotations

import html
import re

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    escaped = html.escape(text)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", escaped))


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(rows: list[str]) -> str:
    head, body = _cells(rows[0]), [_cells(r) for r in rows[2:]]
    th = "".join(f"<th>{inline(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def markdown_to_html(text: str) -> str:
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        if block[0].startswith("|"):
            out.append(_table(block))
        elif all(line.lstrip().startswith("- ") for line in block):
            items = "".join(f"<li>{inline(line.lstrip()[2:])}</li>" for line in block)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{inline(' '.join(block))}</p>")
        block.clear()

    for line in text.splitlines():
        heading = re.match(r"(#{1,4}) (.*)", line)
        if heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif not line.strip():
            flush()
        else:
            if block and block[0].startswith("|") != line.startswith("|"):
                flush()
            block.append(line)
    flush()
    return "\n".join(out)
