"""The report's sections rendered as markdown and as self-contained HTML (inline CSS, plots as
base64 PNG data URIs)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from misentry.bench.report.document import Plot, Section, Table


def markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {_md(title)}", ""]
    for section in sections:
        out += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                out += [_md(block), ""]
            elif isinstance(block, Plot) and block.link:
                out += [f"![{_md(block.caption)}]({block.link.replace(')', '%29')})", ""]
            elif isinstance(block, Plot):
                out += [f"*Plot in report.html: {_md(block.caption)}*", ""]
            else:
                out += [*_md_table(block), ""]
    return "\n".join(out)


def _md_table(table: Table) -> list[str]:
    header = list(table.header)
    if table.group_header is not None:
        header.insert(0, table.group_header)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for label, rows in table.groups:
        for i, row in enumerate(rows):
            cells = [f"**{_md(c.text)}**" if c.bold and c.text else _md(c.text) for c in row]
            if table.group_header is not None:
                cells.insert(0, _md(label) if i == 0 else "")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md(text: str) -> str:
    """Text that markdown shows as written (no tags, links, emphasis or cell breaks)."""
    for char in "\\`*<>[]|":
        text = text.replace(char, "\\" + char)
    return text


STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
thead th { background: #eee; }
tbody th.group { background: #f6f6f6; font-style: italic; }
td.best { font-weight: bold; background: #eef7ee; }
td[title] { cursor: help; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
code { font-size: 0.95em; }
"""


def html_page(title: str, sections: Sequence[Section]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>\n{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<section><h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{e(block)}</p>")
            elif isinstance(block, Plot):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.caption)}">'
                    f"<figcaption>{e(block.caption)}</figcaption></figure>"
                )
            else:
                out.append(_html_table(block))
        out.append("</section>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _html_table(table: Table) -> str:
    e = html.escape
    out = ["<table>"]
    if any(table.header):
        out.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr>")
        out.append("</thead>")
    for label, rows in table.groups:
        out.append("<tbody>")
        if label:
            span = len(table.header)
            out.append(f'<tr><th class="group" colspan="{span}">{e(label)}</th></tr>')
        for row in rows:
            cells = []
            for c in row:
                attrs = ' class="best"' if c.bold else ""
                attrs += f' title="{e(c.tooltip)}"' if c.tooltip else ""
                cells.append(f"<td{attrs}>{e(c.text)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody>")
    out.append("</table>")
    return "\n".join(out)
