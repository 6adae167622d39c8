"""Command line: `metabench {list,run,tune,report,re-evaluate,regress}` (installed) = `python -m benchmarks ...`.

Exit status, one meaning each:
  0    success
  1    cells failed (recorded; the sweep went on) / regress found a regression
  2    bad input: a bad config, value, option or tolerances file, a size above its limit, an
       unusable device, records made under other settings, an output folder in use; nothing written
  3    environment: disk full, no permission, OUT/runs or a report file of the wrong kind, an
       unreachable or dead Ray cluster, out of memory; finished cells are kept
  130  interrupted by SIGINT (Ctrl-C): one line says what finished and the command that resumes
  143  interrupted by SIGTERM: the same
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.executors import ClusterError, quiet_dependencies

quiet_dependencies()  # before algorithms/ imports learn2learn (and with it gym's banner)

from algorithms import list_algorithms  # noqa: E402
from benchmarks.config import (LIMITS, TENSORBOARD_FOLDER, ConfigError, check_device_available,  # noqa: E402
                               load_sweep, parse_limit)
from benchmarks.atomic import refuse_links  # noqa: E402
from benchmarks.lock import LOCK_NAME, LockHeld, folder_lock  # noqa: E402
from benchmarks.plugins import PluginError, load_plugins  # noqa: E402
from benchmarks.records import RecordError, runs_dir  # noqa: E402
from benchmarks.signals import Interrupted, interruptible  # noqa: E402
from tasks import list_tasks  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ENVIRONMENT = 0, 1, 2, 3
EXECUTORS = ("local", "ray")
#: What a report writes into OUT: checked before training, so a folder named summary.csv does not
#: cost the sweep. (The report module owns the list; a name missing here is still written safely.)
REPORT_FILES = ("summary.csv", "curves.csv", "tables.md", "paper_comparison.csv", "robust.csv", "paired.csv")
REPORT_FOLDERS = ("figures",)
#: Free space asked for before training: the records and report of a sweep, generously.
MIN_FREE_BYTES, FREE_BYTES_PER_CELL = 16 * 2 ** 20, 512 * 2 ** 10


class EnvironmentProblem(RuntimeError):
    """The machine, not the input: disk, permissions, what already sits in the output folder."""


def check_output_path(out: Path) -> None:
    """Bad input (exit 2), found without writing: --out names a file or a path under a file, or
    holds a symbolic link where a command writes (the lock, runs/, figures/: see benchmarks.atomic)."""
    too_long = [part for part in out.parts if len(part.encode()) > 255]
    if too_long:
        raise ConfigError(f"output folder {str(out)!r} has a name longer than 255 bytes: {too_long[0][:40]}...")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {str(out)!r} exists and is not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output folder {str(out)!r} is not writable: {str(parent)!r} is a file")
            break
    refuse_links(out, (LOCK_NAME, runs_dir(out).name, *REPORT_FOLDERS))


def prepare_output(out: Path, n_cells: int) -> None:
    """Create OUT and OUT/runs and prove they can be written, before any training (exit 3 if not):
    permissions, a read-only or full disk, OUT/runs a file, a report file that is a folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EnvironmentProblem(f"cannot create output folder {str(out)!r}: {error.strerror or error}") from None
    runs = runs_dir(out)
    if runs.exists() and not runs.is_dir():
        raise EnvironmentProblem(f"{runs} is a file, but records go into a folder there; move it away")
    for name in REPORT_FILES:
        if (out / name).is_dir():
            raise EnvironmentProblem(f"{out / name} is a folder, but the report writes a file there; move it away")
    for name in REPORT_FOLDERS:
        if (out / name).exists() and not (out / name).is_dir():
            raise EnvironmentProblem(f"{out / name} is a file, but the report writes a folder there; move it away")
    for folder in (out, runs):
        try:
            folder.mkdir(exist_ok=True)
            with tempfile.TemporaryFile(dir=folder) as probe:
                probe.write(b"x" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as error:
            raise EnvironmentProblem(f"output folder {str(folder)!r} is not writable: {error.strerror or error}") from None
    needed = MIN_FREE_BYTES + FREE_BYTES_PER_CELL * n_cells
    free = shutil.disk_usage(out).free
    if free < needed:
        raise EnvironmentProblem(f"only {free / 2 ** 20:.1f} MiB free under {out}; this sweep needs about "
                                 f"{needed / 2 ** 20:.0f} MiB for its records and report")


def cmd_list(args) -> int:
    print("tasks:")
    for name in list_tasks():
        print(f"  {name}")
    print("algorithms (backends):")
    for name, backends in list_algorithms().items():
        print(f"  {name}: {', '.join(backends)}")
    return 0


def _print_skipped(skipped, show_all: bool) -> None:
    if not skipped:
        return
    if show_all or len(skipped) == 1:
        for _, reason in skipped:
            print(f"skipped: {reason}", file=sys.stderr)
        return
    print(f"skipped {len(skipped)} combinations an algorithm cannot run, e.g. {skipped[0][1]} "
          f"(--show-skipped lists them all)", file=sys.stderr)


def check_run_options(out, executor: str = "local", workers: int = 1, threads: int = 1, address: str | None = None,
                      limits: dict | None = None) -> dict:
    """`run`'s options, checked before the sweep file is read; returns the limits in force."""
    limits = {**LIMITS, **(limits or {})}
    for name, value in (("threads", threads), ("workers", workers)):
        if not 1 <= value <= limits[name]:
            raise ConfigError(f"--{name} must be between 1 and {limits[name]}, got {value}"
                              + (f" (if meant, raise the limit with --limit {name}=N)" if value > 1 else ""))
    if not str(out).strip():
        raise ConfigError("--out is empty: name an output folder")
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid choices: {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise ConfigError("--address needs --executor ray")
    if address:
        from benchmarks.executors import parse_address

        parse_address(address)
    return limits


def execute_sweep(sweep, out, executor: str = "local", workers: int = 1, address: str | None = None,
                  threads: int = 1, plugins=(), show_skipped: bool = False, progress: bool = True):
    """`run` once its sweep is loaded (also `metabench.run`): every check that can refuse is made
    before anything is written, then the unfinished cells train under the folder's lock and the
    report is rewritten. Returns (the records trained now, the `Report`)."""
    from benchmarks.records import sweep_stale
    from benchmarks.report import write_report
    from benchmarks.sweep import pending_cells, run_sweep

    add_plugins(sweep, plugins)
    if not (executor == "ray" and address):  # a remote cluster's devices are its own business
        check_device_available(sweep.settings.device)
    _print_skipped(sweep.skipped, show_skipped)
    out = Path(out)
    check_output_path(out)
    if sweep.settings.tensorboard:  # a link there would write the event files outside OUT
        refuse_links(out, (TENSORBOARD_FOLDER,))
    if runs_dir(out).is_dir():  # read-only: records made under other settings refuse here, before anything is written
        pending_cells(sweep, out, executor, threads)
    if executor == "ray":  # the cluster answers (or not) before anything is written
        from benchmarks.executors import start_ray

        start_ray(address, workers)
    prepare_output(out, len(sweep.cells))
    with folder_lock(out):
        sweep_stale(out)
        records = run_sweep(sweep, out, executor=executor, workers=workers, address=address, threads=threads,
                            progress=progress)
        report = write_report(out, sweep.limits)
    return records, report


def compile_summary(records: list[dict]) -> str | None:
    """What compiling cost this sweep (the cells trained now; None when nothing compiled and nothing
    was left to `compile = "auto"`): a user waits for it, and a warm program cache
    (`.cache/inductor/`) should make it small; and what "auto" chose (each record says why)."""
    seconds = [r.get("compile_seconds") or 0.0 for r in records if "compile" in str(r.get("engine", ""))]
    auto = [r["compile_choice"] for r in records if (r.get("compile_choice") or {}).get("setting") == "auto"]
    if not seconds and not auto:
        return None
    line = (f"compile: {sum(seconds):.1f} s over {len(seconds)} compiled cell{'s' if len(seconds) != 1 else ''} "
            f"(first calls of their programs, kept out of s/iter)")
    if auto:
        line += (f"; compile = \"auto\" compiled {sum(bool(c.get('compiled')) for c in auto)} of {len(auto)} cells "
                 f"(why: each record's compile_choice)")
    return line


def print_report_location(report) -> None:
    """Where a command's report went (stdout), so nobody has to know the folder layout."""
    out = report.tables.parent
    print(f"report: {report.tables} (tables), {out / 'figures'}{os.sep} (figures), {out / 'summary.csv'} (numbers)")


def cmd_run(args) -> int:
    limits = check_run_options(args.out, args.executor, args.workers, args.threads, args.address,
                               dict(parse_limit(text) for text in args.limit or []))
    overrides = list(args.set or [])
    if args.device:  # a (key, value) pair: validated like the config's own device, whatever it holds
        overrides.append(("device", args.device))
    sweep = load_sweep(args.config, overrides, limits)
    records, report = execute_sweep(sweep, args.out, args.executor, args.workers, args.address, args.threads,
                                    args.plugin, args.show_skipped)
    compile_line = compile_summary(records)
    if compile_line:
        print(compile_line)
    print_report_location(report)
    failed = [r for r in records if r["status"] == "failed"]
    for r in failed:
        print(f"FAILED {r['cell_id']}: {r['error']}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def add_plugins(sweep, plugins) -> None:
    """Name the command's --plugin modules in the sweep's settings: the jobs import them again (a
    spawned worker or Ray task has not)."""
    if plugins:
        sweep.settings = replace(sweep.settings, plugins=tuple(dict.fromkeys(sweep.settings.plugins + tuple(plugins))))


def cmd_tune(args) -> int:
    """`run`'s options and checks, then successive halving (`benchmarks.tuning`): the rungs below the
    last into OUT/rungs/<r>/, the last into OUT/runs/ with the report, tuning.csv beside it."""
    from benchmarks.tuning import describe, load_tuning, tune

    limits = check_run_options(args.out, args.executor, args.workers, args.threads, args.address,
                               dict(parse_limit(text) for text in args.limit or []))
    overrides = list(args.set or [])
    if args.device:
        overrides.append(("device", args.device))
    plan = load_tuning(args.config, overrides, limits)
    add_plugins(plan.sweep, args.plugin)
    _print_skipped(plan.sweep.skipped, args.show_skipped)
    result = tune(plan, args.out, args.executor, args.workers, args.address, args.threads)
    for r in result.failed:
        print(f"FAILED {r['cell_id']}: {r['error']}", file=sys.stderr)
    if result.failed:
        print("a rung has failed cells, so the tuning stopped there; fix the cause and rerun the same command "
              "(finished cells are kept)", file=sys.stderr)
        return EXIT_FAILED
    for group, iterations in result.extra.items():
        if iterations:
            print(f"bracketing: {describe(group)}: + {iterations:,} iterations at rung 0 beyond the budget")
    for line in result.warnings:
        print(line, file=sys.stderr)
    print(f"tuning: {Path(args.out) / 'tuning.csv'}")
    print_report_location(result.report)
    return EXIT_OK


def cmd_report(args) -> int:
    from benchmarks.fingerprint import check_poolable
    from benchmarks.records import load_records
    from benchmarks import figures
    from benchmarks.report import write_report

    limits = _limits(args)
    check_poolable(load_records(Path(args.dir), limits))  # seeds made under other settings are never pooled
    default, figures.QUALITATIVE_PAIR = figures.QUALITATIVE_PAIR, args.qualitative_pair
    try:
        report = write_report(Path(args.dir), limits)
    finally:
        figures.QUALITATIVE_PAIR = default
    print_report_location(report)
    return 0


def cmd_reevaluate(args) -> int:
    """Into a new folder, or the folder of an interrupted run of the same command (it resumes):
    the checks and the lock of `run`."""
    from benchmarks.records import sweep_stale
    from benchmarks.reevaluate import evaluation_overrides, reevaluate
    from benchmarks.report import write_report

    overrides = evaluation_overrides(list(args.set or []))
    if "device" in overrides:
        check_device_available(overrides["device"])
    out = Path(args.out)
    check_output_path(out)
    with contextlib.ExitStack() as held:
        def prepare(dst: Path) -> None:
            prepare_output(dst, len(list(runs_dir(args.dir).glob("*.json"))))
            held.enter_context(folder_lock(dst))
            sweep_stale(dst)

        limits = _limits(args)
        reevaluate(Path(args.dir), out, overrides, prepare=prepare, limits=limits)
        report = write_report(out, limits)
    print(f"re-evaluated records: {runs_dir(out)}{os.sep}")
    print_report_location(report)
    return 0


def cmd_regress(args) -> int:
    from benchmarks.regress import DEFAULT_TOLERANCES, regress

    code, text = regress(Path(args.baseline), Path(args.candidate), Path(args.tolerances or DEFAULT_TOLERANCES),
                         _limits(args))
    print(text)
    return code


def _limits(args) -> dict:
    """The size limits in force for this command: LIMITS raised by its `--limit KEY=N` options
    (records of a sweep run with `--limit` are read with the same option)."""
    return {**LIMITS, **dict(parse_limit(text) for text in args.limit or [])}


def _qualitative_pair(text: str) -> tuple[str, str]:
    from benchmarks.figures import parse_pair

    try:
        return parse_pair(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(text: str) -> str:
    """`--device`: exactly what a config's `device` accepts (the pattern is benchmarks/config.py's)."""
    from benchmarks.config import _DEVICE

    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be 'cpu', 'cuda' or 'cuda:N' (N a device index), got {text!r}")
    return text


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="exit status:\n" + __doc__.split("Exit status, one meaning each:\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a module name or a .py file) first: it registers its algorithms or "
                             "tasks (repeatable)")
    limit = argparse.ArgumentParser(add_help=False)
    limit.add_argument("--limit", action="append", metavar="KEY=N",
                       help="raise a size limit, e.g. iterations=5000000 (limits: benchmarks/config.py LIMITS); "
                            "a folder made with `run --limit` is read with the same option")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered tasks and algorithms/backends", parents=[common]).set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="train every cell of a sweep (resumes: finished cells are skipped)",
                         epilog=parser.epilog, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    run.add_argument("--config", required=True, metavar="TOML",
                     help="sweep file (e.g. benchmarks/configs/smoke.toml; keys: docs/sweep-reference.md)")
    run.add_argument("--out", required=True, help="output folder (records under OUT/runs/; one sweep at a time)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key (TOML value), in every [[grid]] table too (repeatable)")
    run.add_argument("--limit", action="append", metavar="KEY=N",
                     help="raise a size limit for this run, e.g. cells=50000 or iterations=5000000 "
                          "(limits: benchmarks/config.py LIMITS)")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local: this machine (--workers processes); ray: Ray tasks, on a local instance or the "
                          "cluster at --address (default: local)")
    run.add_argument("--workers", type=int, default=1, help="parallel jobs (processes or Ray tasks; default 1)")
    run.add_argument("--address", default=None, metavar="HOST:PORT",
                     help="Ray cluster address (default: start a local instance)")
    run.add_argument("--device", type=_device, default=None,
                     help="cpu, cuda or cuda:N (N a device index); overrides the config's device")
    run.add_argument("--threads", type=int, default=1,
                     help="torch threads per job process (default 1: on these small problems two 1-thread "
                          "workers do more than one 2-thread process, and one thread does not stall under load)")
    run.add_argument("--show-skipped", action="store_true", help="list every skipped combination")
    run.set_defaults(func=cmd_run)
    tune = sub.add_parser("tune", help="tune a sweep's list-valued hyperparameters on validation by successive "
                                       "halving at its iterations (docs/tuning.md; resumes)",
                          epilog=parser.epilog, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])
    for action in run._actions:  # `run`'s options, declared once
        if action.dest not in ("help", "plugin"):
            tune._add_action(action)
    tune.set_defaults(func=cmd_tune)
    report = sub.add_parser("report", help="regenerate summary.csv, tables.md and figures from DIR/runs/",
                            parents=[common, limit])
    report.add_argument("dir", metavar="DIR", help="a sweep's output folder (its records are in DIR/runs/)")
    report.add_argument("--qualitative-pair", type=_qualitative_pair, default="maml,pretrain", metavar="A,B",
                        help="the two algorithms the qualitative figure (fig3) shows side by side")
    report.set_defaults(func=cmd_report)
    again = sub.add_parser("re-evaluate", help="recompute DIR's final evaluations from the stored initialisations "
                                               "(no training) into --out, e.g. with more test sets",
                           parents=[common, limit])
    again.add_argument("dir", metavar="DIR", help="a sweep's output folder whose records are re-evaluated (read only)")
    again.add_argument("--out", required=True,
                       help="output folder for the re-evaluated records and report (a new one, or that of an "
                            "interrupted re-evaluation: it resumes)")
    again.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="an evaluation setting: eval_steps, eval_k_shot, n_test_tasks, n_test_sets, "
                            "n_validation_tasks, n_eval_query, device (repeatable)")
    again.set_defaults(func=cmd_reevaluate)
    regress = sub.add_parser("regress", help="compare a candidate sweep's numbers with a baseline; exit 1 on regression",
                             parents=[common, limit])
    regress.add_argument("--baseline", required=True, metavar="DIR",
                         help="the reference sweep's output folder (e.g. results/baseline)")
    regress.add_argument("--candidate", required=True, metavar="DIR",
                         help="the sweep to check, run from the same config (e.g. .cache/regress-candidate)")
    regress.add_argument("--tolerances", default=None, metavar="TOML",
                         help="per-metric rtol/atol (default: benchmarks/configs/tolerances.toml)")
    regress.set_defaults(func=cmd_regress)
    return parser


def _resume_command(argv: list[str], prog: str) -> str:
    if prog == "python -m benchmarks":
        return f"{shlex.quote(sys.executable)} -m benchmarks {shlex.join(argv)}"
    return shlex.join([prog, *argv])


def _error(message) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """The command line: `argv` (default sys.argv[1:]) in, an exit status out; `prog` is how the
    user called it (`python -m benchmarks` or the installed `metabench`), for help and resume lines."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    with interruptible():
        try:
            load_plugins(args.plugin)
            return args.func(args)
        except Interrupted as interrupt:
            if args.command in ("run", "re-evaluate", "tune") and hasattr(interrupt, "total"):
                done = {"run": "cells finished", "re-evaluate": "records re-evaluated",
                        "tune": f"cells of rung {getattr(interrupt, 'rung', '?')} finished"}[args.command]
                print(f"interrupted by {interrupt.name}: {interrupt.finished} of {interrupt.total} {done} "
                      f"and stored; resume with: {_resume_command(argv, prog)}", file=sys.stderr)
            elif args.command in ("run", "tune"):
                print(f"interrupted by {interrupt.name}; every stored record is whole; resume with: "
                      f"{_resume_command(argv, prog)}", file=sys.stderr)
            else:
                print(f"interrupted by {interrupt.name}; nothing half-written is left", file=sys.stderr)
            return interrupt.exit_code
        except (ConfigError, RecordError, LockHeld, PluginError) as error:
            _error(error)
            return EXIT_BAD_INPUT
        except KeyError as error:
            _error(error.args[0] if error.args else error)
            return EXIT_BAD_INPUT
        except (EnvironmentProblem, ClusterError) as error:
            _error(error)
            return EXIT_ENVIRONMENT
        except MemoryError:
            _error("out of memory (lower a size, e.g. meta_batch, n_test_tasks or the ensemble, or use --workers 1)")
            return EXIT_ENVIRONMENT
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            hint = " (finished cells are kept; fix this and rerun the same command to resume)" if args.command == "run" else ""
            _error(f"{error.strerror or error}{where}{hint}")
            return EXIT_ENVIRONMENT
