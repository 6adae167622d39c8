"""Reports regenerated from DIR/runs/ alone, without training: summary.csv, curves.csv,
tables.md, index.html (the page to open first), latex/*.tex (one per table), robust.csv,
paired.csv, variance.csv, blowup_amplitude.csv, paper_comparison.csv and DIR/figures/*.{png,svg}.

The pieces: `benchmarks.analysis` (frames, pooling, selection by validation, per-task
statistics via `benchmarks.statistics`), `benchmarks.tables` (the report's blocks,
`benchmarks.document`, rendered to Markdown there and by `benchmarks.render_latex`,
`benchmarks.render_html`), `benchmarks.figures` (drawing
with `benchmarks.plots`) and `benchmarks.paper` (section (d)). This module only loads and
writes. Every output is computed (figures rendered to bytes) before anything is written, and
the set is then written as one unit (staged in a hidden folder, then renamed into place), so
a report that fails leaves the previous report whole. A folder an interrupted `re-evaluate`
left unfinished (`records.PARTIAL_MARKER`) gets "partial re-evaluation: N of M records" under the
title of tables.md (and a warning), since every table would otherwise silently lack the rest.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks import paper
from benchmarks.analysis import analyse, summary_frame
from benchmarks.artifacts import load_task_errors
from benchmarks.figures import FIGURES, FORMATS, OUTPUTS, captions, render_figures
from benchmarks.atomic import write_files_atomically
from benchmarks.document import render_markdown
from benchmarks.records import load_records, read_partial_marker, write_atomic
from benchmarks.render_html import render_html
from benchmarks.render_latex import render_latex
from benchmarks.tables import report_blocks

__all__ = ["FIGURES", "FORMATS", "Report", "analyse", "summary_frame", "write_report", "write_summary"]

log = logging.getLogger(__name__)
LATEX = "latex"  # OUT/latex/<table>.tex (`benchmarks.render_latex`)


@dataclass
class Report:
    tables: Path
    figures: list[Path]
    skipped: dict[str, str]


def load_speed_suite(out: Path) -> pd.DataFrame:
    """OUT/speed.csv (the speed suite's clean timings, `make speed`), or empty."""
    path = Path(out) / "speed.csv"
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        log.warning("ignoring unreadable %s: %s", path, error)
        return pd.DataFrame()


def write_summary(out: Path, records: list[dict] | None = None) -> pd.DataFrame:
    records = load_records(out) if records is None else records
    frame = summary_frame(records)
    write_atomic(Path(out) / "summary.csv", frame.to_csv(index=False))
    return frame


def partial_line(out: Path, n_records: int) -> str | None:
    """The line a report of an unfinished re-evaluation carries (None for any other folder): its
    records are a subset of the source's, and every table would silently lack the rest."""
    marker = read_partial_marker(out)
    if marker is None:
        return None
    return (f"partial re-evaluation: {n_records} of {marker['records']} records (an interrupted `re-evaluate` of "
            f"{marker.get('from', 'its source')}; rerun the same command to finish it)")


def write_report(out: Path, limits: dict | None = None) -> Report:
    """Everything a reader opens, from the stored runs: CSV, Markdown tables, figures.

    Raises RecordError (before writing anything) when DIR/runs/ is empty, a record is corrupt, or
    the records report different metrics (`records.folder_metric`: every table compares on one).
    """
    out = Path(out)
    records = load_records(out, limits)  # `limits`: the command's, e.g. `run --limit` (default config.LIMITS)
    partial = partial_line(out, len(records))
    analysis = analyse(records, load_task_errors(out, records), load_speed_suite(out))
    comparison = paper.comparison(analysis.final, analysis.task_errors, analysis.metric)  # MSE folders only
    rendered, skipped = render_figures(analysis)
    if partial:
        log.warning("%s: %s", out, partial)
    paper_table = (paper.comparison_table(comparison), paper.note(comparison)) if not comparison.empty else None
    blocks = report_blocks(analysis, out, captions(analysis.metric), skipped, paper_table, partial)
    latex = render_latex(blocks)
    files: dict[str, str | bytes | None] = {
        "summary.csv": summary_frame(records).to_csv(index=False),
        "curves.csv": analysis.curves.to_csv(index=False),
        "tables.md": render_markdown(blocks),
        "index.html": render_html(blocks, {name: rendered[name]["svg"] for name in rendered}),
        # absent ones are removed: an earlier report's file would not match these records
        "paper_comparison.csv": comparison.to_csv(index=False) if not comparison.empty else None,
        "robust.csv": analysis.robust.to_csv(index=False) if not analysis.robust.empty else None,
        "paired.csv": analysis.paired.to_csv(index=False) if not analysis.paired.empty else None,
        "variance.csv": analysis.variance.to_csv(index=False) if not analysis.variance.empty else None,
        "blowup_amplitude.csv": analysis.by_amplitude.to_csv(index=False) if not analysis.by_amplitude.empty else None,
    }
    for name in FIGURES:
        for fmt in OUTPUTS:  # png, svg, pdf and the caption (`<name>.caption.txt`)
            files[f"figures/{name}.{fmt}"] = rendered[name][fmt] if name in rendered else None
    stale = (out / LATEX).glob("*.tex") if (out / LATEX).is_dir() and not (out / LATEX).is_symlink() else []
    files.update({f"{LATEX}/{path.name}": None for path in stale})  # a table this report no longer has
    files.update({f"{LATEX}/{name}": text for name, text in latex.items()})
    written = write_files_atomically(out, files)
    return Report(out / "tables.md", [p for p in written if p.parent.name == "figures"], skipped)
