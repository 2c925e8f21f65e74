"""Model-folder listings for the dropdowns, re-read only when a directory changes (docs/architecture.md, model folders).

ComfyUI calls INPUT_TYPES on every page load and refresh, and `diffusion_models` may hold hundreds of large files
whose safetensors header decides whether they are ours. A `CachedListing` remembers, per search root, the names it
found and the modification time of every directory it looked into; the next call only stats those directories. A
file added, removed or renamed changes its directory's mtime, so it shows on the next refresh. A predicate's answer
(a header read) is kept per (file, mtime, size), so a re-listing reads only new or changed files.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .bridge import model_dirs


@dataclass
class _Snapshot:
    stamps: dict[str, int]  # directory -> mtime_ns when it was listed
    names: list[str]
    answers: dict[tuple[str, int, int], bool] = field(default_factory=dict)  # (file, mtime_ns, size) -> accepted


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _unchanged(stamps: dict[str, int]) -> bool:
    return all(_mtime(directory) == stamp for directory, stamp in stamps.items())


def _walk(root: Path, stamps: dict[str, int], depth: int | None) -> Iterator[os.DirEntry]:
    """Every entry under `root` (symlinked folders followed, each real folder once), stamping each folder before it
    is listed so a change during the walk shows next time."""
    seen: set[str] = set()
    pending = [(str(root), 0)]
    while pending:
        directory, level = pending.pop()
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        stamp = _mtime(directory)
        if stamp is None:
            continue
        stamps[directory] = stamp
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            yield entry
            if (depth is None or level + 1 < depth) and entry.is_dir():
                pending.append((entry.path, level + 1))


class CachedListing:
    """The names under every folder registered for `folder_key`, listed by `scan` and cached by directory mtimes.

    `scan(root, stamps, accept)` returns the names under one root, recording in `stamps` every directory it read;
    `accept(path)` answers are memoised per file version (see the module docstring)."""

    def __init__(self, folder_key: str, scan: Callable):
        self.folder_key = folder_key
        self._scan = scan
        self._snapshots: dict[Path, _Snapshot] = {}
        self._lock = threading.Lock()

    def __call__(self) -> list[str]:
        names: list[str] = []
        roots = [root for root in model_dirs(self.folder_key) if root.is_dir()]
        with self._lock:
            for root in list(self._snapshots):
                if root not in roots:  # a folder no longer registered: forget it
                    del self._snapshots[root]
            for root in roots:
                snapshot = self._snapshots.get(root)
                if snapshot is None or not _unchanged(snapshot.stamps):
                    snapshot = self._rescan(root, snapshot)
                names += [name for name in snapshot.names if name not in names]
        return names

    def _rescan(self, root: Path, previous: _Snapshot | None) -> _Snapshot:
        old_answers = previous.answers if previous is not None else {}
        snapshot = _Snapshot({}, [])

        def remembered(path: Path, accept: Callable[[Path], bool]) -> bool:
            try:
                stat = path.stat()
            except OSError:
                return False
            key = (str(path), stat.st_mtime_ns, stat.st_size)
            answer = old_answers[key] if key in old_answers else accept(path)
            snapshot.answers[key] = answer  # only files present now: the memo never outgrows the folder
            return answer

        snapshot.names = self._scan(root, snapshot.stamps, remembered)
        self._snapshots[root] = snapshot
        return snapshot


def files_under(suffix: str, accept: Callable[[Path], bool] | None = None) -> Callable:
    """A `scan` listing files ending in `suffix` anywhere under a root (as paths relative to it), optionally only those
    `accept` takes."""

    def scan(root: Path, stamps: dict[str, int], remembered) -> list[str]:
        found = []
        for entry in _walk(root, stamps, depth=None):
            path = Path(entry.path)
            if not entry.name.lower().endswith(suffix) or not path.is_file():
                continue
            if accept is None or remembered(path, accept):
                found.append(path.relative_to(root).as_posix())
        return sorted(found)

    return scan


def folders_under(is_wanted: Callable[[Path], bool]) -> Callable:
    """A `scan` listing the direct sub-folders of a root that `is_wanted` takes (their own folders are stamped too, so
    a download finishing inside one shows)."""

    def scan(root: Path, stamps: dict[str, int], remembered) -> list[str]:
        found = []
        for entry in _walk(root, stamps, depth=2):
            path = Path(entry.path)
            if path.parent == root and is_wanted(path):
                found.append(entry.name)
        return sorted(found)

    return scan


def relative_name(name: str, what: str, must_be: str) -> Path:
    """A dropdown entry as a relative path; ValueError for one that is absolute or climbs out ("..") of its folder."""
    relative = Path(name)
    if not relative.parts or relative.is_absolute() or any(part in ("..", "") for part in relative.parts):
        raise ValueError(f"invalid {what} name {name!r}: it must be {must_be}")
    return relative


def find_in_folders(folder_key: str, relative: Path, default_where: str, what: str, file_only: bool = False) -> Path:
    """The first registered folder's `relative` entry that exists (a symlink inside may point anywhere, as users link
    big files from other drives); FileNotFoundError naming every folder searched."""
    searched = model_dirs(folder_key)
    for root in searched:
        candidate = root / relative
        if candidate.is_file() if file_only else candidate.exists():
            return candidate.absolute()
    where = ", ".join(str(d) for d in searched) or default_where
    raise FileNotFoundError(f"{what} {relative.as_posix()!r} not found in: {where}")
