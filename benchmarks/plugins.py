"""Out-of-tree algorithms, tasks and networks, loaded by module name or file; what a plug-in may
register, and how the code that registered a name is identified.

A plug-in is a Python module that registers itself when imported, through the public
registry functions (`algorithms.register_algorithm`, `tasks.register_task`). It is named on
the command line (`--plugin my_package.my_algorithm` or `--plugin path/to/my_algorithm.py`,
any command), in a sweep file (`plugins = ["path/to/my_algorithm.py"]`; a relative path is
taken from the current folder), or by an installed package's entry point in the group
`metabench.algorithms` (the entry point names the module; loading it registers).

Every file given is imported once (two spellings of one file are one plug-in), under a module
name of its own derived from its resolved path (`FILE_MODULE_PREFIX`): `a/algo.py` and `b/algo.py`
are two plug-ins, and a plug-in file named `json.py` or `tasks.py` neither is mistaken for the
module already imported under that name nor replaces it. A plug-in that fails on import, including
one that calls `sys.exit` (SystemExit), is a PluginError naming it (exit 2); only an interrupt
(Ctrl-C, SIGTERM) goes through.

Names: both registries accept only names matching `NAME` (lowercase letters, digits and `_.+-`,
starting with a letter or digit, at most 64 characters, no `..`): a name is part of a cell id,
hence of a file name, and must not reach into another folder (`sine/v2`, `..`). `check_name` is
the one check; other code (record validation) may use `NAME` too.

What produced a number is part of its identity. Each registry remembers which code registered
each entry (`Sources`): `BUILTIN_SOURCE` for the suite's own, else the module that called the
registry function, as `"<module> sha256:<16 hex digits of its source file at registration>"` (a
plug-in file by its file name, not its path: the same file copied elsewhere is the same code).
That source enters the fingerprint of the cells naming that algorithm or task (`code.algorithm`,
`code.task`, `benchmarks.fingerprint`), and only theirs: an unrelated plug-in changes no
fingerprint, and built-in cells carry no code key (their fingerprints are those of before). So a
plug-in that replaces `maml` gives its cells another fingerprint: a resume without it refuses,
and its seeds are never pooled with the built-in's. Decisions: the hash covers the calling file,
not what it imports (the suite's code is versioned by the numerics version, a plug-in's helpers
by its author); any edit of the plug-in, a comment too, makes its cells another configuration.

A sweep's plug-ins are stored in its settings, and every job (a worker process, a Ray task)
imports them again before it builds a learner: a spawned worker does not inherit the parent's
registrations. Those stored names are only a note for the reader: `re-evaluate`, `report` and
`regress` never import code a results folder names (a folder is data, possibly from someone else);
the user passes the plug-ins with `--plugin`, and `re-evaluate` checks that what is registered
under each record's names is the code that made the record, or refuses naming the plug-ins.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

ENTRY_POINT_GROUP = "metabench.algorithms"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
#: the one pattern an algorithm or task name must match (both registries check it through `check_name`)
NAME = re.compile(r"(?!.*\.\.)[a-z0-9][a-z0-9_.+-]{0,63}")
BUILTIN_SOURCE = "builtin"  # the source of the suite's own registrations
UNKNOWN = "(registered without its registry function)"  # e.g. written into `tasks.TASKS` directly
FILE_MODULE_PREFIX = "metabench_plugin_"  # plug-in files are imported as modules named so
_loaded: set[str] = set()  # module names and resolved file paths
_entry_points_loaded = False
#: what a failed plug-in import may raise; interrupts (KeyboardInterrupt, `signals.Interrupted`) pass
FAILURES = (Exception, SystemExit)


class PluginError(ValueError):
    """A plug-in that cannot be found or fails on import; the message names it."""


def check_name(kind: str, name) -> None:
    """ValueError unless `name` is a valid `kind` ("algorithm", "task") name (see `NAME`)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{kind} name must be 1-64 lowercase letters, digits and _.+-, starting with a letter or "
                         f"digit, without '..' (e.g. 'lslr', 'sine-v2'), got {name!r}")


def code_source(frame) -> str:
    """Who is registering: the module running in `frame` (the registry function's caller), as
    its name (a plug-in file: its file name) and the hash of its source file."""
    module, file = frame.f_globals.get("__name__", "?"), frame.f_globals.get("__file__")
    if not file:
        return f"{module} (no source file)"
    label = Path(file).name if module.startswith(FILE_MODULE_PREFIX) else module
    try:
        return f"{label} sha256:{hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]}"
    except OSError:
        return f"{label} (source file {file} unreadable)"


class Sources:
    """Which code registered each entry of a registry. Kept per (name, entry), not per name, so
    that an entry put back (a test restoring its registry) keeps its own source."""

    def __init__(self):
        self._sources: dict[tuple[str, int], tuple[object, str]] = {}

    def record(self, name: str, entry, source: str) -> None:
        self._sources[(name, id(entry))] = (entry, source)  # holding the entry keeps its id unique

    def of(self, name: str, entry) -> str:
        found = self._sources.get((name, id(entry)))
        return found[1] if found else UNKNOWN


def load_plugins(modules=()) -> None:
    """Import each plug-in module once (and the installed entry points, once per process)."""
    load_entry_points()
    for name in modules:
        if isinstance(name, str) and name.endswith(".py"):
            key = str(Path(name).resolve())
            if key not in _loaded:
                _load_file(name)
                _loaded.add(key)
            continue
        if name in _loaded:
            continue
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise PluginError(f"plugin {name!r} is neither a module name (e.g. 'my_package.my_algorithm') "
                              "nor a .py file")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):
                raise PluginError(f"plugin {name!r} not found: put the folder that contains it on PYTHONPATH "
                                  f"or install its package") from None
            raise PluginError(f"plugin {name!r} failed to import: {error}") from None
        except FAILURES as error:  # a plug-in's own bug is reported, not a traceback
            raise PluginError(f"plugin {name!r} failed to import: {type(error).__name__}: {error}") from None
        _loaded.add(name)


def load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except FAILURES as error:
            raise PluginError(f"entry point {entry.name!r} ({entry.value}) in group {ENTRY_POINT_GROUP!r} "
                              f"failed to load: {type(error).__name__}: {error}") from None


def file_module_name(path: Path) -> str:
    """The module name a plug-in file is imported under: unique per resolved path, readable."""
    resolved = Path(path).resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return f"{FILE_MODULE_PREFIX}{digest}_{re.sub(r'[^A-Za-z0-9_]', '_', resolved.stem)}"


def _load_file(path: str) -> None:
    """Import a plug-in from its file, under `file_module_name` (never a module imported already)."""
    file = Path(path)
    if not file.is_file():
        raise PluginError(f"plugin file {path!r} does not exist (relative paths start at {Path.cwd()})")
    name = file_module_name(file)
    spec = importlib.util.spec_from_file_location(name, file.resolve())
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # while it runs (dataclasses, pickling look it up)
    try:
        spec.loader.exec_module(module)
    except FAILURES as error:
        del sys.modules[name]
        raise PluginError(f"plugin file {path!r} failed to import: {type(error).__name__}: {error}") from None
