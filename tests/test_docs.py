"""Documentation that cannot drift: the sweep-file reference and the README's commands."""
from __future__ import annotations

import re
from pathlib import Path

from benchmarks import sweep_reference

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_reference_is_generated_from_the_config_definitions():
    committed = sweep_reference.DOC.read_text(encoding="utf-8")
    assert committed == sweep_reference.render(), (
        "docs/sweep-reference.md is stale: run `.venv/bin/python -m benchmarks.sweep_reference --write`")


def test_sweep_reference_lists_every_key_the_parser_accepts():
    from benchmarks.config import SWEEP_KEYS, Settings
    import dataclasses

    text = sweep_reference.render()
    for key in SWEEP_KEYS + [f.name for f in dataclasses.fields(Settings)]:
        assert f"| `{key}` |" in text, key


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make bench", "make test"], commands


def test_every_make_target_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)", readme)) | set(re.findall(r"^make ([a-z][a-z-]*)", readme, re.M))
    assert named and named <= targets, f"README names unknown make targets: {sorted(named - targets)}"
