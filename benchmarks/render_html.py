"""The report as one self-contained HTML page (OUT/index.html), the page a person opens first.

Self-contained because a results folder is copied, mailed and opened from disk: no request leaves
the page (no stylesheet, script, font or image from the network), the figures are the report's
own SVG inlined (their XML prolog and metadata dropped), and the style and the few lines of
script are inline. The script makes every table sortable (click a column's header; numbers sort
by their leading value, "–"/"n/a" last) and filterable (a box above each table keeps the rows
containing the typed text), then writes `data-ready="1"` on <body>: the browser check's sign
that it ran. Without JavaScript the page is the same, unsorted.
"""
from __future__ import annotations

import html
import re

import pandas as pd

from benchmarks.document import NOTES_HEADING, Block, Figure, Heading, Note, Table, gathered_notes, spans

_PROLOG = re.compile(r"^.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.4em 0 1.2em}
th,td{border-bottom:1px solid #ddd;padding:2px 6px;text-align:left;white-space:nowrap}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}
th[data-sort=asc]::after{content:" \\25B2"} th[data-sort=desc]::after{content:" \\25BC"}
.scroll{overflow-x:auto} input.filter{margin:.2em 0;width:20em}
figure{margin:1em 0} figure svg{max-width:100%;height:auto} figcaption{font-size:13px;color:#444}
code{background:#f4f4f4;padding:0 2px}
"""

SCRIPT = """
(function(){
  function key(text){var m=text.replace(/\\u2212/g,'-').match(/^-?(inf|\\d[\\d.]*(e[+-]?\\d+)?)/i);
    if(!m) return null; var v=parseFloat(m[0].replace(/inf/i,'Infinity')); return isNaN(v)?null:v;}
  document.querySelectorAll('table.data').forEach(function(table){
    var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var desc=th.dataset.sort==='asc'; table.querySelectorAll('th').forEach(function(h){delete h.dataset.sort;});
        th.dataset.sort=desc?'desc':'asc';
        rows.sort(function(a,b){var x=a.cells[col].textContent,y=b.cells[col].textContent,kx=key(x),ky=key(y);
          var c=(kx!==null&&ky!==null)?kx-ky:(kx===null)-(ky===null)||x.localeCompare(y);
          return desc?-c:c;}).forEach(function(r){body.appendChild(r);});
      });
    });
    var box=table.parentNode.previousElementSibling;
    if(box&&box.classList.contains('filter')) box.addEventListener('input',function(){
      var q=box.value.toLowerCase(); rows.forEach(function(r){
        r.style.display=r.textContent.toLowerCase().indexOf(q)<0?'none':'';});});
  });
  document.body.setAttribute('data-ready','1');
})();
"""


def inline(text: str) -> str:
    """Text with the tables' `code` and **bold** marks -> escaped HTML."""
    return "".join(f"<code>{html.escape(t)}</code>" if kind == "code" else f"<strong>{html.escape(t)}</strong>"
                   if kind == "bold" else html.escape(t) for kind, t in spans(str(text)))


def svg_inline(svg: bytes | str) -> str:
    """An SVG file's text as an element to embed (its XML prolog, doctype and metadata removed)."""
    text = svg.decode() if isinstance(svg, bytes) else svg
    return _METADATA.sub("", _PROLOG.sub("", text, count=1))


def table_html(table: Table) -> str:
    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and pd.isna(value)) else inline(value)
    head = "".join(f"<th>{inline(c)}</th>" for c in table.frame.columns)
    rows = "\n".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                     for row in table.frame.itertuples(index=False))
    name = html.escape(table.name)
    return (f'<input class="filter" type="search" placeholder="filter rows" aria-label="filter {name}">'
            f'<div class="scroll"><table class="data" id="{name}"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{rows}\n</tbody></table></div>")


def render_html(blocks: list[Block], svgs: dict[str, bytes | str]) -> str:
    """index.html: the blocks in order, each figure's SVG (from `svgs`, by name) inline, then the notes."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "Report")
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{inline(block.text)}</h{block.level}>")
        elif isinstance(block, Note):
            parts.append(f"<p>{inline(block.text)}</p>")
        elif isinstance(block, Table):
            parts.append(table_html(block))
        elif isinstance(block, Figure):
            if block.skipped or block.name not in svgs:
                parts.append(f"<p><code>{html.escape(block.name)}</code>: <strong>skipped</strong>: "
                             f"{inline(block.skipped or 'not rendered')}</p>")
            else:
                parts.append(f'<figure id="{html.escape(block.name)}">{svg_inline(svgs[block.name])}'
                             f"<figcaption><code>{html.escape(block.name)}</code>: {inline(block.caption)}"
                             "</figcaption></figure>")
    notes = gathered_notes(blocks)
    if notes:
        parts.append(f"<h2>{NOTES_HEADING}</h2>")
        for heading, texts in notes:
            parts.append(f"<h3>{inline(heading)}</h3>")
            parts.extend(f"<p>{inline(text)}</p>" for text in texts)
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")
