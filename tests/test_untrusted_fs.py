"""An output folder whose content cannot be trusted, and interrupts at any instant (issue 20):
no write follows a symbolic link out of OUT (the lock, OUT/runs, OUT/figures, a report file, the
speed tables), the report's set swap leaves the previous report whole whatever instant an
interrupt lands on, and a Ray sweep interrupted by SIGINT/SIGTERM ends like a local one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import records as records_module
from benchmarks.cli import main
from benchmarks.config import ConfigError
from benchmarks.records import write_atomic, write_files_atomically
from benchmarks.signals import Interrupted, interruptible

ROOT = Path(__file__).resolve().parents[1]

TINY = """
algorithm = "maml"
backend = "func"
iterations = 20
meta_batch = 5
seed = 0
eval_steps = 1
n_test_tasks = 20
n_validation_tasks = 20
log_every = 10
"""

PRECIOUS = b"precious, outside OUT\n"


def run(tmp_path: Path, out: Path, *extra: str) -> int:
    config = tmp_path / "sweep.toml"
    config.write_text(TINY)
    return main(["run", "--config", str(config), "--out", str(out), "--threads", "1", *extra])


def files(folder: Path) -> dict:
    """Every file and link under `folder` (links by target, not followed), for byte-exact comparison."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[path.relative_to(folder)] = ("link", os.readlink(path))
        elif path.is_file():
            found[path.relative_to(folder)] = path.read_bytes()
    return found


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside OUT that no command may change."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


def _untouched(victim: Path) -> None:
    assert victim.read_bytes() == PRECIOUS
    assert sorted(p.name for p in victim.parent.iterdir()) == [victim.name], list(victim.parent.iterdir())


# ----------------------------------------------------------------------------- the lock (defect 5)

@pytest.mark.parametrize("command", ["run", "re-evaluate"])
def test_a_symlinked_lock_is_refused_and_its_target_untouched(finished, tmp_path, victim, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    if command == "run":
        code = run(tmp_path, out)
    else:
        code = main(["re-evaluate", str(finished), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert ".lock" in err and "symbolic link" in err and "Traceback" not in err, err
    _untouched(victim)
    assert not (out / "runs").exists(), "wrote before refusing"


def test_the_lock_itself_refuses_a_link_a_hard_link_a_folder_and_a_fifo(tmp_path, victim):
    from benchmarks.lock import folder_lock

    cases = {"symlink": lambda p: p.symlink_to(victim), "dangling": lambda p: p.symlink_to(tmp_path / "nothing"),
             "hard link": lambda p: os.link(victim, p), "folder": lambda p: p.mkdir(), "fifo": lambda p: os.mkfifo(p)}
    for what, make in cases.items():
        out = tmp_path / what
        out.mkdir()
        make(out / ".lock")
        with pytest.raises(ConfigError, match=r"\.lock"):
            with folder_lock(out):
                pass
        _untouched(victim)
    assert not (tmp_path / "nothing").exists()
    out = tmp_path / "plain"  # and an ordinary folder still works, twice
    out.mkdir()
    for _ in range(2):
        with folder_lock(out):
            assert (out / ".lock").read_text() == f"{os.getpid()}\n"


# ----------------------------------------------------------------------------- OUT/runs, OUT/figures, report files

def test_a_symlinked_runs_folder_is_refused_before_anything_is_written(tmp_path, victim, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").symlink_to(victim.parent, target_is_directory=True)
    (victim.parent / ".old.json.x.tmp").write_text("a stale-looking file that is not ours")
    assert run(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert "runs" in err and "symbolic link" in err and "Traceback" not in err, err
    assert sorted(p.name for p in victim.parent.iterdir()) == [".old.json.x.tmp", victim.name]
    assert victim.read_bytes() == PRECIOUS


def test_records_and_sweeps_of_stale_files_never_go_through_a_symlinked_folder(tmp_path, victim):
    """Defence in depth below the CLI's check: the writer and the sweeper refuse or skip the link."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").symlink_to(victim.parent, target_is_directory=True)
    stale = victim.parent / ".x.json.1.tmp"
    stale.write_text("not ours")
    with pytest.raises(ConfigError, match="symbolic link"):
        records_module.write_record(out, {"cell_id": "c", "cell": {}, "status": "failed"})
    records_module.sweep_stale(out)
    assert stale.exists()
    _untouched_but(victim, stale)


def _untouched_but(victim: Path, *allowed: Path) -> None:
    assert victim.read_bytes() == PRECIOUS
    assert sorted(victim.parent.iterdir()) == sorted([victim, *allowed])


def test_write_atomic_replaces_a_symlinked_file_not_its_target(tmp_path, victim):
    (tmp_path / "out" / "runs").mkdir(parents=True)
    record = tmp_path / "out" / "runs" / "c.json"
    record.symlink_to(victim)
    write_atomic(record, "{}")
    assert not record.is_symlink() and record.read_text() == "{}"
    _untouched(victim)
    assert not list(record.parent.glob(".*"))


def _no_figures(analysis):
    """The report without drawing (seconds per report): every figure skipped, so its files are removed."""
    from benchmarks.figures import FIGURES

    return {}, {name: "not drawn in this test" for name in FIGURES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny sweep with its report (figures not drawn); tests copy it."""
    base = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("benchmarks.report.render_figures", _no_figures)
        assert run(base, base / "out") == 0
    return base / "out"


@pytest.fixture
def reported(finished, tmp_path, monkeypatch) -> Path:
    import shutil

    monkeypatch.setattr("benchmarks.report.render_figures", _no_figures)
    out = tmp_path / "reported"
    shutil.copytree(finished, out, symlinks=True)
    (out / "figures").mkdir(exist_ok=True)
    return out


def test_report_replaces_a_symlinked_report_file_not_its_target(reported, victim):
    for name in ("tables.md", "summary.csv"):
        (reported / name).unlink()
        (reported / name).symlink_to(victim)
    assert main(["report", str(reported)]) == 0
    assert not (reported / "tables.md").is_symlink() and (reported / "tables.md").read_text().startswith("#")
    assert not (reported / "summary.csv").is_symlink() and "maml" in (reported / "summary.csv").read_text()
    _untouched(victim)


def test_report_refuses_a_symlinked_figures_folder_and_keeps_the_old_report(reported, victim, capsys):
    import shutil

    from benchmarks.figures import FIGURES

    theirs = victim.parent / "figures"
    theirs.mkdir()
    for name in FIGURES:  # what the report would remove or replace, were it to follow the link
        (theirs / f"{name}.png").write_bytes(b"theirs")
    shutil.rmtree(reported / "figures")
    (reported / "figures").symlink_to(theirs, target_is_directory=True)
    before, kept = files(reported), files(theirs)
    assert main(["report", str(reported)]) == 2
    err = capsys.readouterr().err
    assert "figures" in err and "symbolic link" in err and "Traceback" not in err, err
    assert files(reported) == before and files(theirs) == kept
    assert run(reported.parent, reported) == 2  # a sweep refuses it before training, too
    assert "figures" in capsys.readouterr().err
    assert files(reported) == before and files(theirs) == kept


def test_the_speed_tables_replace_a_symlinked_file_not_its_target(tmp_path, victim):
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_speed_table import _json
    finally:
        sys.path.remove(str(ROOT / "tests"))
    from benchmarks.speed.table import main as speed_main

    out = tmp_path / "out"
    out.mkdir()
    for name in ("speed.csv", "speed.md"):
        (out / name).symlink_to(victim)
    assert speed_main([str(_json(tmp_path, quiet=True)), str(out)]) == 0
    assert not (out / "speed.md").is_symlink() and "Speed" in (out / "speed.md").read_text()
    _untouched(victim)


# ----------------------------------------------------------------------------- the set swap, interrupted anywhere (defect 6)

OLD = {"summary.csv": "old summary", "tables.md": "old tables", "robust.csv": "old robust",
       "figures/a.png": b"old a", "figures/b.svg": b"old b"}
NEW = {"summary.csv": "new summary", "tables.md": "new tables", "robust.csv": None, "paired.csv": "new paired",
       "figures/a.png": b"new a", "figures/b.svg": None, "figures/c.png": b"new c", "deeper/new/d.csv": "new d"}


def _old_report(out: Path, victim: Path) -> dict:
    write_files_atomically(out, OLD)
    (out / "figures" / "linked.png").symlink_to(victim)  # a destination that is a link: restored as the link
    (out / "runs").mkdir()
    (out / "runs" / "keep.json").write_text("{}")
    return files(out)


def _count_replaces(tmp_path, monkeypatch, victim) -> int:
    out = tmp_path / "count"
    out.mkdir()
    _old_report(out, victim)
    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda *a, **k: calls.append(a) or real(*a, **k))
    write_files_atomically(out, {**NEW, "figures/linked.png": b"new linked"})
    monkeypatch.setattr(os, "replace", real)
    return len(calls)


@pytest.mark.parametrize("after", [False, True], ids=["before-the-rename", "after-the-rename"])
def test_an_interrupt_at_any_rename_of_the_swap_restores_the_old_report_byte_for_byte(tmp_path, monkeypatch,
                                                                                        victim, after):
    """KeyboardInterrupt raised by the k-th rename (before it happens, or once it has happened), for
    every k: the old set of files is back byte for byte, links as links, no staging folder left."""
    total = _count_replaces(tmp_path, monkeypatch, victim)
    assert total >= 10
    real = os.replace
    for k in range(1, total + 1):
        out = tmp_path / f"k{k}-{after}"
        out.mkdir()
        before = _old_report(out, victim)
        calls = []

        def interrupted(*args, **kwargs):
            calls.append(args)
            if len(calls) == k:
                if after:
                    real(*args, **kwargs)
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(os, "replace", interrupted)
        try:
            with pytest.raises(KeyboardInterrupt):
                write_files_atomically(out, {**NEW, "figures/linked.png": b"new linked"})
        finally:
            monkeypatch.setattr(os, "replace", real)
        assert files(out) == before, f"interrupted at rename {k} of {total}"
        assert not [p for p in out.rglob(".*") if p.name != ".lock"], f"staging left at rename {k}"
        assert not (out / "deeper").exists(), f"a folder made for the new set is left at rename {k}"
        _untouched(victim)


def test_a_signal_during_the_swap_lets_it_finish_then_interrupts(tmp_path, monkeypatch, victim):
    """SIGINT in the middle of the renames: the swap completes (microseconds), then `Interrupted`."""
    out = tmp_path / "out"
    out.mkdir()
    _old_report(out, victim)
    real, calls = os.replace, []

    def signalled(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", signalled)
    with interruptible(), pytest.raises(Interrupted):
        write_files_atomically(out, NEW)
    monkeypatch.setattr(os, "replace", real)
    got = files(out)
    for name, data in NEW.items():
        expected = None if data is None else (data.encode() if isinstance(data, str) else data)
        assert got.get(Path(name)) == expected, name
    assert not list(out.glob(".report-*"))


def test_report_interrupted_during_its_swap_keeps_the_previous_tables(reported, monkeypatch, capsys):
    """The issue's case: an interrupt just as `report` had moved the old tables.md aside (before it
    recorded the move) used to lose it, while saying "nothing half-written is left"."""
    before = files(reported)
    real = os.replace

    def interrupted(source, *args, **kwargs):
        real(source, *args, **kwargs)
        if str(source).endswith("tables.md"):  # the old tables.md, moved aside
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["report", str(reported)])
    monkeypatch.setattr(os, "replace", real)
    assert files(reported) == before
    assert not list(reported.glob(".report-*"))


# ----------------------------------------------------------------------------- Ray interrupts (defect 11)

class _FakeRay:
    """What run_ray uses of Ray; `wait` fails as Ray's C++ wait does when a signal handler raises in it."""

    def __init__(self, error: BaseException):
        self.error, self.shut = error, False

    def remote(self, **options):
        return lambda function: type("Remote", (), {"remote": staticmethod(lambda *a: object())})

    def wait(self, pending, num_returns=1, timeout=None):
        raise self.error

    def nodes(self):
        return [{"Alive": True}]

    def shutdown(self):
        self.shut = True


def _inside_ray(interrupt: BaseException) -> SystemError:
    """The SystemError Ray raises when a Python signal handler raised inside CoreWorker.wait."""
    try:
        try:
            raise interrupt
        except BaseException as cause:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from cause
    except SystemError as error:
        return error


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_ray_wait_is_the_interrupt_not_a_system_error(tmp_path, monkeypatch, capsys, signum):
    pytest.importorskip("ray")
    import ray.util.queue

    from benchmarks import executors

    monkeypatch.setattr(ray.util.queue, "Queue", lambda: None)  # no actor, hence no real Ray instance
    fake = _FakeRay(_inside_ray(Interrupted(signum)))
    monkeypatch.setattr(executors, "start_ray", lambda address, workers: fake)
    assert run(tmp_path, tmp_path / "out", "--executor", "ray") == 128 + signum
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "0 of 1 cells finished" in lines[0], err
    assert "Traceback" not in err and "SystemError" not in err, err
    assert fake.shut

    fake = _FakeRay(_inside_ray(KeyboardInterrupt()))  # library use, Python's own SIGINT handler
    with pytest.raises(KeyboardInterrupt):
        executors.run_ray([[object()]], None, lambda *a: None, 1, None, 1)
    fake = _FakeRay(SystemError("some other internal error"))  # not an interrupt: left as it is
    monkeypatch.setattr(executors, "start_ray", lambda address, workers: fake)
    with pytest.raises(SystemError, match="other internal"):
        executors.run_ray([[object()]], None, lambda *a: None, 1, None, 1)


def test_starting_ray_keeps_the_commands_signal_handlers(monkeypatch):
    """ray.init installs a SIGTERM handler that calls sys.exit (exit 15 or 1, Ray's C++ core logs
    "*** SIGTERM received"): the command's handlers are put back."""
    ray = pytest.importorskip("ray")
    from benchmarks import executors

    def init(**kwargs):
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(15))
        signal.signal(signal.SIGINT, signal.default_int_handler)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    with interruptible():
        ours = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        executors.start_ray(None, 1)
        assert {s: signal.getsignal(s) for s in ours} == ours


RAY_SWEEP = """
algorithm = "maml"
backend = "func"
iterations = 1000000
seed = [0, 1]
log_every = 25
n_test_tasks = 20
n_validation_tasks = 20
ensemble = false
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_real_ray_sweep_interrupted_while_it_waits_exits_cleanly(tmp_path, signum):
    """A local Ray instance (one worker, ~10 s to start here): SIGINT to the process group (Ctrl-C)
    or SIGTERM to the sweep while it waits in ray.wait: exit 128 + signal, one line, no traceback."""
    pytest.importorskip("ray")
    config = tmp_path / "sweep.toml"
    config.write_text(RAY_SWEEP)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "run", "--config", str(config), "--out",
                             str(tmp_path / "out"), "--executor", "ray"], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline and "sweep (0/2 cells)" not in seen and proc.poll() is None:
        seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")  # the bar: Ray is up, jobs run
    time.sleep(2)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = seen + err
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "SystemError" not in err and "SIGTERM received" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "0 of 2 cells finished" in lines[0], err[-3000:]
