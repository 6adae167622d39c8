"""The sweep-file reference (`docs/sweep-reference.md`), generated from the config definitions.

Types and defaults are read from the `Cell` and `Settings` dataclasses and the task
families, so they cannot drift from the code; a cell key's meaning and role in the report are
its schema (`benchmarks.config.SCHEMA`), the shared settings' one-line meanings live here, and a
test fails when a key has none (or the committed file differs from what this prints).
Regenerate with `python -m benchmarks.sweep_reference --write`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from algorithms import ALGORITHMS, BUILTIN
from benchmarks.config import SCHEMA, Cell, Settings
from benchmarks.tuning import Tuning
from tasks import TASKS, SineFamily, SineFreqFamily

DOC = Path(__file__).resolve().parents[1] / "docs" / "sweep-reference.md"

MEANINGS = {
    # cell keys: their meanings are declared with them (`benchmarks.config.Cell`, the `help` of each key)
    # shared settings
    "eval_every": "evaluate every N iterations as well as at the end (0: only at the end)",
    "eval_steps": "adaptation steps at evaluation: MSE recorded after 0, 1, ..., N steps",
    "eval_k_shot": "evaluate at these K as well as the training K (an integer or a list)",
    "n_test_tasks": "tasks per meta-test set (`n_eval_query` query points each)",
    "n_test_sets": "independent meta-test sets of `n_test_tasks` (set j drawn from the test seed + j); "
                   "the report shows their spread",
    "n_validation_tasks": "meta-validation tasks: they choose the best configuration (test never does)",
    "n_query": "query points per training task",
    "log_every": "log the training loss and initial-gradient norm every N iterations",
    "msl_anneal_iters": "MAML++ multi-step-loss annealing length in iterations (0: 10% of `iterations`)",
    "ensemble": "train `func` cells that differ only in seed, LR_base and LR_meta as one batched program "
                "(bitwise the same numbers as alone; only faster)",
    "device": "`cpu` or `cuda` (`cuda:N`)",
    "plugins": "modules (names or `.py` paths) imported first: they register algorithms or tasks "
               "(see CONTRIBUTING.md); also `--plugin` on the command line",
    # `compile`, `seed_streams`, `tensorboard` and later settings: their meanings are declared with them (`help`)
    "task_params": "a table of task-family parameters (below), e.g. `task_params = { noise = 0.1 }`",
}

TASK_PARAM_MEANINGS = {
    "amplitude_range": "A ~ U[low, high)",
    "phase_range": "φ ~ U[low, high)",
    "x_range": "x ~ U[low, high] for query points (and support points unless `support_x_range`)",
    "support_x_range": "x range of the support points only (`sine-half`: [0, 5])",
    "noise": "standard deviation of Gaussian noise added to y",
    "frequency_range": "`sine-freq` only: w ~ U[low, high) in y = A·sin(w·x + φ)",
}
#: The built-in families whose fields are documented (a plug-in documents its own).
FAMILY_CLASSES = (SineFamily, SineFreqFamily)


def _type_name(annotation) -> str:
    text = str(annotation)
    return {"tuple[int, ...]": "int or list of int", "tuple[str, ...]": "str or list of str", "dict": "table",
            "bool | str": "bool or `\"auto\"`", "int | str": "int or `\"k\"`"}.get(text, text)


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "**required**"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if value == () or value == {}:
        return "`[]`" if value == () else "`{}`"
    return f"`{value}`"


def _row(field: dataclasses.Field, meanings: dict) -> str:
    meaning = field.metadata.get("help") or meanings.get(field.name)  # a cell key's own `help`
    if not meaning:
        raise KeyError(f"key {field.name!r} has no meaning in benchmarks/sweep_reference.py: add one")
    return f"| `{field.name}` | {_type_name(field.type)} | {_default(field)} | {meaning} |"


def _keys(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _roles() -> str:
    """How the report and the sweep treat the cell keys, read from the schema."""
    chosen = [n for n in SCHEMA.config if n not in SCHEMA.compared]
    members = [n for n in SCHEMA.names if n not in SCHEMA.ensemble]
    return (f"The report pools over {_keys(SCHEMA.pooled)}, chooses one configuration by validation per "
            f"{_keys(SCHEMA.compared)} among the values of {_keys(chosen)}, and times programs per "
            f"{_keys(SCHEMA.timed)}. With `ensemble = true`, cells that differ only in {_keys(members)} train "
            f"as one batched program where their engine allows it.")


def render() -> str:
    header = "| key | type | default | meaning |\n|---|---|---|---|"
    families = ", ".join(f"`{name}`" for name in sorted(TASKS)
                         if type(TASKS[name](k_shot=1, n_query=1)) in FAMILY_CLASSES)
    task_fields = {f.name: f for cls in FAMILY_CLASSES for f in dataclasses.fields(cls)
                   if f.name not in ("k_shot", "n_query")}
    lines = [
        "# Sweep-file reference",
        "",
        "<!-- generated by `python -m benchmarks.sweep_reference --write`; a test keeps it in sync -->",
        "",
        "A sweep file is TOML. Start from `benchmarks/configs/smoke.toml` (every algorithm, about a minute) "
        "and run it with `.venv/bin/python -m benchmarks run --config FILE --out runs/NAME`.",
        "",
        "## Cell keys",
        "",
        "Each may be a single value or a list; lists expand to the cartesian product of cells. Cells "
        "an algorithm cannot run (a backend it lacks) are skipped, and the run says how many and why.",
        "",
        header,
        *(_row(f, MEANINGS) for f in dataclasses.fields(Cell)),
        "",
        _roles(),
        "",
        "## Shared settings",
        "",
        "One value for the whole sweep (no lists, except `eval_k_shot`).",
        "",
        header,
        *(_row(f, MEANINGS) for f in dataclasses.fields(Settings)),
        "",
        "## `[[grid]]` tables",
        "",
        "Several grids in one file: each `[[grid]]` table holds cell keys; the top-level cell keys are "
        "defaults for every table, and the sweep is the union of the tables' products (duplicates run "
        "once). Shared settings stay at the top level. `--set KEY=VALUE` on the command line overrides "
        "a key at the top level and in every table.",
        "",
        "```toml",
        "k_shot = 10",
        "iterations = 2000",
        "",
        "[[grid]]",
        'algorithm = ["maml", "fomaml"]',
        'backend = "func"',
        "inner_steps = [1, 5]",
        "",
        "[[grid]]",
        'algorithm = "maml"',
        'backend = "l2l"',
        "```",
        "",
        "## `[tuning]` table",
        "",
        "Read by `python -m benchmarks tune --config FILE --out DIR` (docs/tuning.md), which tunes the sweep's "
        "list-valued hyperparameters on validation by successive halving at its `iterations`; `run` refuses a "
        "file with one. `--set tuning.KEY=VALUE` sets one of its keys.",
        "",
        header,
        *(_row(f, {}) for f in dataclasses.fields(Tuning)),
        "",
        f"## Task parameters (`task_params`), for the task families {families}",
        "",
        header,
        *(_row(f, TASK_PARAM_MEANINGS) for f in task_fields.values()),
        "",
        "## Algorithms and backends",
        "",
        "The suite's own (plug-ins add theirs: `python -m benchmarks list --plugin FILE`).",
        "",
        "| algorithm | backends |",
        "|---|---|",
        *(f"| `{name}` | {', '.join(f'`{b}`' for b in sorted(backends))} |" for name, backends in ALGORITHMS.items()
          if name in BUILTIN),  # the committed page must not depend on what a process has loaded
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(DOC.parents[1])}")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
