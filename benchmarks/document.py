"""The report as blocks, built once and rendered to every format (`render_markdown` here,
`benchmarks.render_latex`, `benchmarks.render_html`), so no second format re-parses Markdown.

A block is a heading, a table (a frame of already formatted cells, as `benchmarks.tables` prints
them, with a caption and the notes that explain it), a figure reference, or a note. Text in
captions, notes and cells uses the two Markdown marks the tables always used, `code` and
**bold**; each renderer translates them (`spans`).

Order: the reader opens the tables first, so a table's long notes (`Table.notes`) are not
printed under it but gathered, in order, into a closing "Notes" section (Markdown and HTML);
a short `Note` stays where it stands.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

NOTES_HEADING = "Notes"
_SPAN = re.compile(r"(\*\*.+?\*\*|`[^`]+`)")


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Table:
    """`name`: a file-name-safe identifier (the LaTeX file `latex/<name>.tex`); `caption`: one line
    (the section's heading if empty); `notes`: the long explanation, gathered at the end."""
    name: str
    frame: pd.DataFrame
    caption: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """A figure in OUT/figures/ (`name`.png/.svg), or why it was skipped."""
    name: str
    caption: str
    skipped: str | None = None


@dataclass
class Note:
    text: str


Block = Heading | Table | Figure | Note


def spans(text: str) -> list[tuple[str, str]]:
    """`text` split into ("text" | "code" | "bold", content) pieces."""
    pieces = []
    for part in _SPAN.split(text):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            pieces.append(("bold", part[2:-2]))
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            pieces.append(("code", part[1:-1]))
        elif part:
            pieces.append(("text", part))
    return pieces


def with_captions(blocks: list[Block]) -> list[Block]:
    """The blocks, every table without a caption captioned by the heading above it."""
    heading = ""
    for block in blocks:
        if isinstance(block, Heading):
            heading = block.text
        elif isinstance(block, Table) and not block.caption:
            block.caption = heading
    return blocks


def gathered_notes(blocks: list[Block]) -> list[tuple[str, list[str]]]:
    """(heading of the section, notes) for every table with notes, in order."""
    gathered, heading = [], ""
    for block in blocks:
        if isinstance(block, Heading) and block.level <= 2:
            heading = block.text
        elif isinstance(block, Table) and block.notes:
            gathered.append((heading, block.notes))
    return gathered


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, not a dependency here)."""
    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and value != value) else str(value).replace(
            "|", "\\|").replace("\n", " ")
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def render_markdown(blocks: list[Block]) -> str:
    """tables.md: the blocks in order (consecutive figures as one list), then the gathered notes."""
    sections: list[str] = []
    previous = None
    for block in blocks:
        if isinstance(block, Heading):
            sections.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Table):
            sections.append(markdown_table(block.frame))
        elif isinstance(block, Note):
            sections.append(block.text)
        elif isinstance(block, Figure):
            line = (f"- `{block.name}`: **skipped**: {block.skipped}" if block.skipped else
                    f"- `{block.name}`: {block.caption}")
            if isinstance(previous, Figure):
                sections[-1] += "\n" + line
            else:
                sections.append(line)
        previous = block
    notes = gathered_notes(blocks)
    if notes:
        sections.append(f"## {NOTES_HEADING}")
        for heading, texts in notes:
            sections.append(f"### {heading}")
            sections.extend(texts)
    return "\n\n".join(section.rstrip("\n") for section in sections) + "\n"
