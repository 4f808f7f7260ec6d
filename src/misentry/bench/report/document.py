"""The report as a document: sections of paragraphs, tables and plots, built once and rendered
to both markdown and HTML (:mod:`misentry.bench.report.render`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False
    tooltip: str = ""


@dataclass(frozen=True)
class Table:
    """Rows in labelled groups; ``group_header`` names the column the labels sit in (md)."""

    header: tuple[str, ...]
    groups: tuple[tuple[str, tuple[tuple[Cell, ...], ...]], ...]
    group_header: str | None = None


@dataclass(frozen=True)
class Plot:
    """A PNG; ``link``: where markdown finds it as a file (relative to the report), when it is
    one (otherwise markdown names it and points to the HTML)."""

    caption: str
    png: bytes
    link: str = ""


Block = str | Table | Plot
"""A paragraph, a table or a plot."""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
