"""Every result number README.md and the docs quote is generated from the committed CSVs
(`benchmarks.readme`), or is on a short allow-list of numbers that are not results, with a reason.

A hand-copied README had misquoted two Reptile medians and one blow-up count: these tests fail
when a generated block differs from what the committed CSVs give, and when a decimal number or a
percentage appears in a document's prose outside the generated blocks without a stated reason.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import readme
from benchmarks.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
#: a decimal (0.217, 2,000.5), a percentage (34%, 0.0056 %) or a ratio (27x)
NUMBER = re.compile(r"\d[\d,]*\.\d+|\d+(?:\.\d+)?\s?%|\d+(?:\.\d+)?x\b")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+\.png)\)")
README_MAX_LINES = 250

#: document -> {text around a number that is not a committed result: why it may stay in the prose}
ALLOWED = {
    "README.md": {
        "pinned torch 2.14.1": "a pinned version (requirements.txt)",
        "learn2learn 0.2.0": "a pinned version",
        "higher 0.2.1": "a pinned version",
        "setup took 2.4 minutes": "how long `make setup` took: the time of a command",
        "the sweep 6–13 of them": "the time of a command (`make bench`'s sweep, busy and idle machine)",
        "the speed suite 6)": "the time of a command",
        "median [95% bootstrap CI]": "the confidence level, not a result",
        "A ~ U[0.1, 5)": "a task family's definition (configuration)",
        "w ~ U[0.8, 1.2)": "a task family's definition (configuration)",
    },
    "docs/paper-reproduction.md": {
        "LR_base 0.01 (set": "paper.toml's configuration",
        "the **central 95%** of": "the reproduction rule's declared level (benchmarks/paper.py), not a result",
        "the 2.5% tails": "the rule's declared tails, not a result",
        "(σ = 0.01, zero biases)": "Finn's released code's initialisation (configuration), not a result",
        "defaults to 0.001 and": "Finn's released code's flag default (configuration), not a result",
        "MAML 0.344 / 0.286 after": "a superseded 600-task run's numbers (history; not in the committed CSVs)",
    },
}


def _prose(text: str) -> str:
    """`text` with every generated block's body blanked (markers kept; offsets change)."""
    return readme.BLOCK.sub("<!-- generated -->", text)


def unexplained_numbers(text: str, allowed: dict[str, str]) -> list[str]:
    """The numbers of `text`'s prose that sit in no allow-listed phrase, each with its context."""
    prose = _prose(text)
    covered = [(m.start(), m.end()) for phrase in allowed for m in re.finditer(re.escape(phrase), prose)]
    return [prose[max(0, m.start() - 30):m.end() + 10].replace("\n", " ") for m in NUMBER.finditer(prose)
            if not any(a <= m.start() and m.end() <= b for a, b in covered)]


@pytest.mark.parametrize("document", readme.DOCUMENTS)
def test_generated_blocks_are_what_the_committed_csvs_give(document):
    text = (ROOT / document).read_text(encoding="utf-8")
    names = readme.block_names(text, document)
    assert names, f"{document} has no generated block"
    assert readme.rewrite(text, where=document) == text, (
        f"{document}: a generated block differs from the committed CSVs; run `make readme`")


@pytest.mark.parametrize("document", sorted(ALLOWED))
def test_every_number_in_the_prose_is_generated_or_allowed(document):
    text = (ROOT / document).read_text(encoding="utf-8")
    stray = unexplained_numbers(text, ALLOWED[document])
    assert not stray, (f"{document}: numbers outside generated blocks (generate them in benchmarks/readme.py, or "
                       f"allow-list a non-result with its reason): {stray}")
    prose = _prose(text)
    stale = [phrase for phrase in ALLOWED[document] if phrase not in prose]
    assert not stale, f"{document}: allow-list entries no longer in its prose (remove them): {stale}"


def test_the_prose_check_catches_a_hand_copied_number():
    text = "Intro.\n<!-- generated: cost -->\n0.537 ms\n<!-- end generated -->\nReptile's median 0.78 and 34% blew up."
    stray = unexplained_numbers(text, {})
    assert len(stray) == 2 and "median 0.78" in stray[0] and "34% blew" in stray[1]
    assert not any("0.537" in s for s in stray)  # inside a generated block
    assert unexplained_numbers(text, {"median 0.78 and 34%": "test"}) == []


def test_a_misquoted_number_inside_a_block_is_stale(tmp_path):
    for name in readme.DOCUMENTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert readme.stale(tmp_path, readme.RESULTS) == {}
    readme_text = (tmp_path / "README.md").read_text(encoding="utf-8")
    block = readme.BLOCK.search(readme_text)
    assert "| reptile |" in block.group("body")
    wrong = readme_text.replace("| reptile |", "| reptile (0.78) |", 1)
    (tmp_path / "README.md").write_text(wrong, encoding="utf-8")
    changed = readme.stale(tmp_path, readme.RESULTS)
    assert list(changed) == ["README.md"] and changed["README.md"] == readme_text


@pytest.mark.parametrize("text, message", [
    ("<!-- generated: nonsense -->\nx\n<!-- end generated -->\n", "unknown generated block(s) ['nonsense']"),
    ("<!-- generated: cost -->\nno end marker\n", "without its `<!-- end generated -->`"),
])
def test_a_bad_block_is_an_error_naming_the_document_and_the_choices(text, message):
    with pytest.raises(ConfigError) as error:
        readme.rewrite(text, where="docs/x.md")
    assert message in str(error.value) and "docs/x.md" in str(error.value)
    if "unknown" in message:
        assert "paper-glance" in str(error.value)


def test_a_missing_csv_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"robust\.csv: no such file"):
        readme.rewrite("<!-- generated: paper-glance -->\n<!-- end generated -->\n", tmp_path / "results")


def test_make_readme_exits_2_on_a_bad_document_and_writes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    for name in readme.DOCUMENTS:
        shutil.copy(ROOT / name, tmp_path / name)
    bad = (tmp_path / "docs/speed.md").read_text(encoding="utf-8") + "\n<!-- generated: typo -->\n<!-- end generated -->\n"
    (tmp_path / "docs/speed.md").write_text(bad, encoding="utf-8")
    (tmp_path / "README.md").write_text("<!-- generated: cost -->\n<!-- end generated -->\n", encoding="utf-8")
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    assert readme.main([]) == 2
    assert "docs/speed.md" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "<!-- generated: cost -->\n<!-- end generated -->\n"


def test_check_exits_1_on_a_stale_block_and_names_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    for name in readme.DOCUMENTS:
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "README.md").write_text("<!-- generated: cost -->\nold\n<!-- end generated -->\n", encoding="utf-8")
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    assert readme.main(["--check"]) == 1
    assert "stale: README.md" in capsys.readouterr().out
    assert "old" in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_the_readme_shows_committed_figures_and_stays_short():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    images = IMAGE.findall(text)
    assert 3 <= len(images) <= 4, images
    for image in images:
        assert (ROOT / image).is_file(), image
    if shutil.which("git") and (ROOT / ".git").exists():
        tracked = subprocess.run(["git", "ls-files", "--", *images], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
        assert sorted(tracked) == sorted(images), f"figures the README shows that git does not track: {images}"
