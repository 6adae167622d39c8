"""Writes inside an output folder: each file whole or absent, a set of files swapped as one unit,
and never through a symbolic link below the folder.

A file is written to a temporary file in its folder, flushed to disk, renamed over its name, and
the folder is flushed too (`write_atomic`), so a kill at any moment (even SIGKILL, even a power
cut) leaves the old file or the new one. A report's files are swapped as a set
(`write_files_atomically`).

Symbolic links: the output folder itself may be one (the user named it), but below it nothing is
followed when writing, since OUT may come from elsewhere (a copied or downloaded results folder)
and a link in it must not make a command change a file outside it. A folder below OUT where
files go that is a link is refused (`UnsafePath`, a ConfigError: exit 2, nothing written): the
commands check OUT's entries before writing (`refuse_links`), the report's swap walks every
destination folder with O_NOFOLLOW (`open_folder`). A file that is a link is replaced as a
link, never written through: a rename replaces the link itself and leaves its target alone, and
temporary files are created with O_EXCL | O_NOFOLLOW. (Not covered: another process that swaps
a folder of OUT for a link in the microseconds between that check and a rename; OUT is not
meant to be shared with writers one does not trust.) Reading through links is not this
module's concern.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Callable, Iterable, Mapping

from benchmarks.config import ConfigError
from benchmarks.signals import deferred

TMP_SUFFIX = ".tmp"
_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


class UnsafePath(ConfigError):
    """A symbolic link (or another file's hard link) inside the output folder where a command writes."""


def unsafe_link(path: Path, root: Path) -> UnsafePath:
    """The error naming the link, where it points, and what to do."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return UnsafePath(f"{path} is a symbolic link{target}; nothing is written through a link inside {root}, so "
                      f"that no file outside it changes: remove the link")


def refuse_links(root: Path, names) -> None:
    """UnsafePath for the first of `names` under `root` that is a symbolic link (a check that
    writes nothing, for a command to run before it writes anything)."""
    for name in names:
        if (Path(root) / name).is_symlink():
            raise unsafe_link(Path(root) / name, Path(root))


def open_folder(root: Path, relative: Path | str = ".", create: bool = False, created: list | None = None) -> int:
    """A descriptor of root/relative reached without following a link below `root`: UnsafePath at a
    link, NotADirectoryError at a file. `create` makes missing folders (appending each made one's
    path relative to `root` to `created`, if given)."""
    root = Path(root)
    fd = os.open(root, _FOLDER)
    try:
        here = Path()
        for part in Path(relative).parts:
            here = here / part
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                    if created is not None:
                        created.append(here)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            except (NotADirectoryError, OSError) as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise unsafe_link(root / here, root) from None
                raise NotADirectoryError(errno.ENOTDIR, "is a file, a folder is needed here", str(root / here)) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_folder(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename itself is still atomic
        pass


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the rename lives in the folder, not in the file)."""
    fd = os.open(folder, _FOLDER)
    try:
        _fsync_folder(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Temporary file in the same folder, fsync, rename, fsync the folder: a reader sees the old
    file or the new one, and after return the new one survives a crash. The folder is the
    caller's (created if missing); a link at `path` is replaced, not followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, _FOLDER)  # the temporary file and the rename in one and the same folder
    try:
        tmp = None
        try:
            while tmp is None:
                name = f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
                with suppress(FileExistsError):
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
                    tmp = name
            with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
                os.fchmod(handle.fileno(), 0o644)  # whatever the umask: results are for other readers too
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException as error:
            if tmp is not None:
                with suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=folder)
            if isinstance(error, OSError):  # name the file being written (a full disk names none)
                raise OSError(error.errno, error.strerror, str(path)) from None
            raise
        _fsync_folder(folder)
    finally:
        os.close(folder)


def write_files_atomically(out: Path, files: Mapping[str, str | bytes | None]) -> list[Path]:
    """Replace a set of files under `out` as one unit: all of them or (on an error) none.

    `files` maps a relative path to its new content, or to None for a file that must go (an
    earlier report's figure that no longer applies). Everything is first written into a hidden
    staging folder inside `out` (same file system: renames are atomic), every destination is
    checked (a folder where a file must go, or a linked folder, fails here, before anything is
    replaced), then each old file is moved aside and the new one moved in. Each move is recorded
    before it is made, and the restore looks at what really happened (a recorded move may not have
    happened yet), so an exception at any instant, KeyboardInterrupt included, puts the old set back
    whole, links as links. SIGINT/SIGTERM are held during the renames (microseconds): the swap
    completes and the interrupt is raised after it. A SIGKILL during the renames leaves the staging
    folder, which `records.sweep_stale` removes. Returns the written paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts or not Path(name).parts:
            raise ValueError(f"write_files_atomically: {name!r} must be a relative path inside {out}")
    for name in files:  # what would make the swap fail (or write outside `out`) fails now
        target = out / name
        for parent in reversed(target.relative_to(out).parents[:-1]):
            if (out / parent).is_symlink():
                raise unsafe_link(out / parent, out)
            if not (out / parent).exists():
                break
            if not (out / parent).is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "is a file, a folder is needed here", str(out / parent))
        if target.is_dir() and not target.is_symlink():
            raise IsADirectoryError(errno.EISDIR, "is a folder, cannot be replaced by a file", str(target))
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".report-", suffix=TMP_SUFFIX))
    try:
        (staging / "new").mkdir()
        (staging / "old").mkdir()
        for key, data in enumerate(files.values()):  # staged under their index: no folders to make
            if data is not None:
                with open(staging / "new" / str(key), "xb") as handle:
                    handle.write(data if isinstance(data, bytes) else data.encode())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(staging / "new" / str(key), 0o644)
        with deferred():
            _swap(out, staging, files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name, data in files.items() if data is not None]


def _swap(out: Path, staging: Path, files: Mapping[str, str | bytes | None]) -> None:
    """The renames of `write_files_atomically`, undone on any exception. (Plain two-path renames:
    each destination folder has just been opened with O_NOFOLLOW, see the module doc.)"""
    folders: dict[Path, int] = {}
    created: list[Path] = []
    moved: list[tuple[Path, str, bool, bool]] = []  # (destination, staged key, had an old file, has a new one)
    try:
        for key, (name, data) in enumerate(files.items()):
            parent = Path(name).parent
            if parent not in folders:
                folders[parent] = open_folder(out, parent, create=True, created=created)
            target = out / name
            old = os.path.lexists(target)
            moved.append((target, str(key), old, data is not None))  # recorded before it is made
            if old:
                os.replace(target, staging / "old" / str(key))
            if data is not None:
                os.replace(staging / "new" / str(key), target)
        for folder in folders.values():
            _fsync_folder(folder)
    except BaseException:
        _restore(out, staging, moved, created)
        raise
    finally:
        for folder in folders.values():
            os.close(folder)


def _restore(out: Path, staging: Path, moved, created: list[Path]) -> None:
    """Put the old set back, checking each recorded move: an old file is back where it was moved
    aside (over the new one, if that came in), a new file where none was is removed, and folders
    made for the new set go. A move recorded but not made finds its file where it was."""
    for target, key, old, new in reversed(moved):
        if old and os.path.lexists(staging / "old" / key):
            os.replace(staging / "old" / key, target)
        elif not old and new and not os.path.lexists(staging / "new" / key):
            Path(target).unlink(missing_ok=True)
    for made in reversed(created):
        with suppress(OSError):
            os.rmdir(out / made)  # only if empty; a link there is not followed


def report_writes(write: Callable[[], Iterable[Path] | int], bad_input: tuple[type[BaseException], ...]) -> int:
    """The ending of a stand-alone report command (`benchmarks.ablation`, `benchmarks.speed.table`),
    so each answers as `python -m benchmarks` does: `write()` returns the paths it wrote (all or
    none, e.g. `write_files_atomically`), each printed as `wrote PATH`, exit 0; or an exit status,
    returned as it is (a step before the writing failed and has said why: the ablations' runs); one
    of `bad_input` (the command's own error types) becomes a one-line `error: ...` on stderr and
    exit 2 (the CLI's EXIT_BAD_INPUT), no traceback. Any other exception is a bug and propagates."""
    try:
        written = write()
    except bad_input as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(written, int):
        return written
    for path in written:
        print(f"wrote {path}")
    return 0
