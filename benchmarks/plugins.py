"""Out-of-tree algorithms, tasks and networks, loaded by module name.

A plug-in is a Python module that registers itself when imported, through the public
registry functions (`algorithms.register_algorithm`, `tasks.register_task`). It is named on
the command line (`--plugin my_package.my_algorithm` or `--plugin path/to/my_algorithm.py`,
any command), in a sweep file (`plugins = ["path/to/my_algorithm.py"]`; a relative path is
taken from the current folder), or by an installed package's entry point in the group
`metabench.algorithms` (the entry point names the module; loading it registers).

A sweep's plug-ins are stored in its settings, and every job (a worker process, a Ray task)
imports them again before it builds a learner: a spawned worker does not inherit the
parent's registrations. Plug-ins do not enter a record's fingerprint (loading an unrelated one
must not invalidate finished cells); the record keeps their names in its settings.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

ENTRY_POINT_GROUP = "metabench.algorithms"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_loaded: set[str] = set()
_entry_points_loaded = False


class PluginError(ValueError):
    """A plug-in that cannot be found or fails on import; the message names it."""


def load_plugins(modules=()) -> None:
    """Import each plug-in module once (and the installed entry points, once per process)."""
    load_entry_points()
    for name in modules:
        if name in _loaded:
            continue
        if isinstance(name, str) and name.endswith(".py"):
            _load_file(name)
            _loaded.add(name)
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
        except Exception as error:  # a plug-in's own bug is reported, not a traceback
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
        except Exception as error:
            raise PluginError(f"entry point {entry.name!r} ({entry.value}) in group {ENTRY_POINT_GROUP!r} "
                              f"failed to load: {type(error).__name__}: {error}") from None


def _load_file(path: str) -> None:
    """Import a plug-in from its file, under its file name as module name (e.g. `lslr`)."""
    file = Path(path)
    if not file.is_file():
        raise PluginError(f"plugin file {path!r} does not exist (relative paths start at {Path.cwd()})")
    name = file.stem
    if name in sys.modules:  # already imported under that name (e.g. by a test or another path)
        return
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise PluginError(f"plugin file {path!r} failed to import: {type(error).__name__}: {error}") from None
