"""Paper-ready output (issue 22): interval formatting, the report's block model and its Markdown,
LaTeX and HTML renderings."""
from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.statistics import Estimate
from benchmarks.tables import DISTINCT_DIGITS, fmt_estimate, fmt_interval, fmt_rate


def _numbers(text: str) -> tuple[float, float, float]:
    value, rest = text.split(" [", 1)
    low, high = rest.rstrip("]%").split(", ")
    return float(value.rstrip("%")), float(low), float(high)


# ----------------------------------------------------------------------------- intervals

def test_probability_of_improvement_interval_keeps_its_digits():
    assert fmt_estimate(Estimate(0.493, 0.462, 0.522), 2) == "0.49 [0.46, 0.52]"
    assert fmt_estimate(Estimate(0.31, 0.28, 0.34), 2) == "0.31 [0.28, 0.34]"


@pytest.mark.parametrize("value,low,high,digits", [
    (0.493, 0.462, 0.522, 2), (0.4996, 0.4994, 0.4999, 2), (0.0996, 0.0994, 0.1004, 2), (1.004, 0.9951, 1.006, 2),
    (1.23e-9, 1.1e-9, 1.31e-9, 3), (4.56e12, 4.4e12, 4.71e12, 3), (-0.0287, -0.13, 0.089, 3),
    (-1.5e-7, -1.50004e-7, -1.49997e-7, 3), (0.95, 0.949, 0.951, 1), (123456.0, 123455.0, 123457.5, 2),
    (0.5, 0.6, 0.7, 2),
])
def test_printed_interval_never_excludes_its_printed_estimate(value, low, high, digits):
    text = fmt_estimate(Estimate(value, low, high), digits)
    printed, printed_low, printed_high = _numbers(text)
    assert (printed_low <= printed or value < low) and (printed <= printed_high or value > high), text
    scale = 10 ** (math.floor(math.log10(max(abs(low), abs(high)))) - digits - DISTINCT_DIGITS + 1)
    assert printed_low < printed_high or high - low < scale, text  # distinct bounds print distinct (not ties)
    for true, shown in ((low, printed_low), (high, printed_high)):  # never fewer significant figures
        assert abs(shown - true) <= 0.5 * 10 ** (math.floor(math.log10(abs(true))) - digits + 1) * (1 + 1e-9), text


def test_rates_go_through_the_same_interval_rule():
    printed, low, high = _numbers(fmt_rate(Estimate(0.004996, 0.004994, 0.004999)))
    assert low <= printed <= high and low < high
    assert fmt_rate(Estimate(0.999, 0.99, 1.0)) == "99.9% [99, 100]"


def test_undefined_and_non_finite_intervals_print_as_before():
    assert fmt_estimate(Estimate(6.9, np.nan, np.nan)) == "6.9 [n/a]"
    assert fmt_estimate(Estimate(6.9, np.nan, np.nan), interval=False) == "6.9"
    assert fmt_estimate(Estimate(math.inf, 3.2e7, math.inf), 3) == "inf [3.2e+07, inf]"
    assert fmt_estimate(Estimate(0.0, 0.0, 0.0), 3) == "0 [0, 0]"
    assert fmt_interval(1.0, np.nan, 2.0) == ("1", "n/a", "2")
    assert fmt_estimate(Estimate(np.nan, 1.0, 2.0), 3) == "nan [1, 2]"  # a non-finite estimate stays visible
    assert fmt_estimate(Estimate(1.0, 1.0, 1.0 + 1e-15), 2) == "1 [1, 1]"  # a float tie gets no 16 digits


# ----------------------------------------------------------------------------- LaTeX and HTML checks

import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from html.parser import HTMLParser  # noqa: E402

import pandas as pd  # noqa: E402

from benchmarks.document import Figure, Heading, Note, Table, render_markdown  # noqa: E402
from benchmarks.render_html import render_html  # noqa: E402
from benchmarks.render_latex import PREAMBLE, escape, render_latex  # noqa: E402

HOSTILE = r"50% & $x_1$ #2 {a} ~b^c \d <script>alert(1)</script> **bold** `code` ± × Δ – ✓"
SVG = b'<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">' \
      b'<metadata><rdf:RDF><dc:source>https://example.org/x</dc:source></rdf:RDF></metadata>' \
      b'<rect width="5" height="5"/></svg>\n'


def _blocks():
    frame = pd.DataFrame({"algorithm": ["maml", "anil"], "K": [10, 5], "P(better)@1": ["0.49 [0.46, 0.52]", "n/a"],
                          "note": [HOSTILE, "**5**"]})
    return [Heading("Report: x", 1), Note("intro with `runs/`"), Heading("(a) First"),
            Table("a_first", frame, notes=["A long note about (a)."]), Heading("Figures"),
            Figure("fig1", "a drawing"), Figure("fig2", "", skipped="needs more data")]


def check_latex(text: str) -> None:
    """Balanced braces, paired \\begin/\\end, booktabs rules in order, every row the spec's columns."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    plain = re.sub(r"\\[{}&%$#_]", "", body)
    depth = 0
    for ch in plain:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, text
    assert depth == 0, text
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, text
    assert not stack
    lines = body.splitlines()
    rules = [line for line in lines if line in ("\\toprule", "\\midrule", "\\bottomrule")]
    assert rules == ["\\toprule", "\\midrule", "\\bottomrule"], rules
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", body).group(1)
    for line in lines:
        if line.endswith(r" \\"):
            assert len(re.split(r"(?<!\\)&", line)) == len(spec), line
    assert "$" not in re.sub(r"\\\$|\$\\\w+(\{[^}]*\})*\$|\$-\$", "", body), "an unescaped $"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.urls, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action", "data") and v
                      and not v.startswith("#")]
        if tag not in ("meta", "input", "rect", "path", "use", "br", "img", "link", "stop"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "xlink:href") and v and not v.startswith("#")]

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str, n_tables: int, figures: list[str]) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.tags.count("table") == n_tables
    assert page.urls == [], page.urls  # nothing to fetch: no src/href at all
    assert not re.search(r"""url\(\s*['"]?(https?:)?//|@import""", text)
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", text)
    for name in figures:
        match = re.search(rf'<figure id="{name}">\s*<svg\b.*?</svg>', text, re.S)
        assert match, name
        assert "<metadata>" not in match.group(0) and "<?xml" not in match.group(0)
    return page


def test_latex_tables_are_escaped_booktabs_with_matching_columns():
    files = render_latex(_blocks())
    assert list(files) == ["a_first.tex"]
    check_latex(files["a_first.tex"])
    assert r"50\% \& \$x\_1\$ \#2 \{a\} \textasciitilde{}b\textasciicircum{}c \textbackslash{}d" in files["a_first.tex"]
    assert r"\textbf{bold} \texttt{code} $\pm$ $\times$ $\Delta$ -- $\checkmark$" in files["a_first.tex"]
    assert escape("a_b") == r"a\_b"


def test_latex_compiles_where_a_tex_engine_is_installed(tmp_path):
    if not shutil.which("pdflatex"):
        pytest.skip("no pdflatex on this machine")
    (tmp_path / "a_first.tex").write_text(render_latex(_blocks())["a_first.tex"])
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n" + PREAMBLE +
                                      "\\begin{document}\n\\input{a_first}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:]


def test_html_page_is_self_contained_and_escaped():
    text = render_html(_blocks(), {"fig1": SVG})
    page = check_html(text, 1, ["fig1"])
    assert "<script>alert(1)</script>" not in text.split("<script>")[0]  # the cell's text is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "needs more data" in text and "data-ready" in text
    assert "<strong>bold</strong>" in text and "<code>code</code>" in text
    assert text.index("A long note about (a).") > text.index('id="fig1"')  # notes after tables and figures
    assert page.stack == [], page.stack  # every element closed


def test_markdown_puts_long_notes_after_the_tables():
    text = render_markdown(_blocks())
    assert text.index("| algorithm |") < text.index("- `fig1`: a drawing") < text.index("## Notes")
    assert text.index("### (a) First") < text.index("A long note about (a).")
    assert "- `fig1`: a drawing\n- `fig2`: **skipped**: needs more data" in text


def test_report_writes_markdown_latex_and_html_from_one_model(tmp_path, monkeypatch):
    from test_report import make_record

    from benchmarks import report
    from benchmarks.records import write_record

    first, *rest = report.FIGURES  # drawing every figure takes ~20 s; the page only embeds their SVG
    monkeypatch.setattr(report, "render_figures", lambda a: (
        {first: {fmt: SVG if fmt == "svg" else b"x" for fmt in report.OUTPUTS}}, {name: "stub" for name in rest}))

    records = [make_record(a, "func", seed, blowups=(7, 2) if a == "maml" else None)
               for a in ("maml", "pretrain") for seed in (0, 1)]
    for record in records:
        write_record(tmp_path, record)
    (tmp_path / "latex").mkdir()
    (tmp_path / "latex" / "gone.tex").write_text("% a table an earlier report had")
    report.write_report(tmp_path)
    tables = sorted(p.name for p in (tmp_path / "latex").iterdir())
    assert "gone.tex" not in tables and "a_best.tex" in tables and "e_paired_maml.tex" in tables
    for name in tables:
        check_latex((tmp_path / "latex" / name).read_text())
    text = (tmp_path / "index.html").read_text()
    svgs = sorted(p.stem for p in (tmp_path / "figures").glob("*.svg"))
    check_html(text, len(tables), svgs)
    assert (tmp_path / "tables.md").read_text().count("| algorithm |") >= 1
