"""Command line: `python -m benchmarks {list,run,report,re-evaluate,regress}`.

Every bad input ends in one clear message on stderr and exit status 2, before anything is
written; failures inside cells are recorded and make the sweep exit 1 at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from algorithms import list_algorithms
from benchmarks.config import ConfigError, load_sweep
from benchmarks.records import RecordError
from tasks import list_tasks


def _check_writable(out: Path) -> None:
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {str(out)!r} is not writable")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ConfigError(f"output folder {str(out)!r} is not writable: {error.strerror or error}") from None


def cmd_list(args) -> int:
    print("tasks:")
    for name in list_tasks():
        print(f"  {name}")
    print("algorithms (backends):")
    for name, backends in list_algorithms().items():
        print(f"  {name}: {', '.join(backends)}")
    return 0


def cmd_run(args) -> int:
    from benchmarks.report import write_report
    from benchmarks.sweep import run_sweep

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f'device="{args.device}"')
    sweep = load_sweep(args.config, overrides)
    for values, reason in sweep.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    out = Path(args.out)
    _check_writable(out)
    records = run_sweep(sweep, out, executor=args.executor, workers=args.workers, address=args.address,
                        threads=args.threads)
    write_report(out)
    failed = [r for r in records if r["status"] == "failed"]
    for r in failed:
        print(f"FAILED {r['cell_id']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from benchmarks.report import write_report

    write_report(Path(args.dir))
    print(f"report written to {args.dir}")
    return 0


def cmd_reevaluate(args) -> int:
    from benchmarks.reevaluate import evaluation_overrides, reevaluate

    overrides = evaluation_overrides(list(args.set or []))
    out = Path(args.out)
    reevaluate(Path(args.dir), out, overrides, prepare=_check_writable)
    from benchmarks.report import write_report

    write_report(out)
    print(f"re-evaluated records and report written to {out}")
    return 0


def cmd_regress(args) -> int:
    from benchmarks.regress import DEFAULT_TOLERANCES, regress

    code, text = regress(Path(args.baseline), Path(args.candidate), Path(args.tolerances or DEFAULT_TOLERANCES))
    print(text)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered tasks and algorithms/backends").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="train every cell of a sweep (resumes: finished cells are skipped)")
    run.add_argument("--config", required=True, help="sweep TOML file")
    run.add_argument("--out", required=True, help="output folder (records under OUT/runs/)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (TOML value)")
    run.add_argument("--executor", choices=["local", "ray"], default="local")
    run.add_argument("--workers", type=int, default=1, help="parallel jobs (processes or Ray tasks)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local instance)")
    run.add_argument("--device", choices=["cpu", "cuda"], default=None, help="overrides the config's device")
    run.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / workers)")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="regenerate summary.csv, tables.md and figures from DIR/runs/")
    report.add_argument("dir")
    report.set_defaults(func=cmd_report)
    again = sub.add_parser("re-evaluate", help="recompute DIR's final evaluations from the stored initialisations "
                                               "(no training) into --out, e.g. with more test sets")
    again.add_argument("dir")
    again.add_argument("--out", required=True, help="new output folder")
    again.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="an evaluation setting: eval_steps, eval_k_shot, n_test_tasks, n_test_sets, "
                            "n_validation_tasks, device")
    again.set_defaults(func=cmd_reevaluate)
    regress = sub.add_parser("regress", help="compare a candidate sweep's numbers with a baseline; exit 1 on regression")
    regress.add_argument("--baseline", required=True)
    regress.add_argument("--candidate", required=True)
    regress.add_argument("--tolerances", default=None, help="TOML of per-metric rtol/atol (default: benchmarks/configs/tolerances.toml)")
    regress.set_defaults(func=cmd_regress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ConfigError, RecordError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
