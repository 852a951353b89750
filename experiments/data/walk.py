"""Finding the image files under a folder, with one symlink rule for every scan of the suite.

A symbolic link whose target lies outside the *root* (the dataset root for training, evaluation and the data
check; the scanned folder for ``spectral-detect``) is not followed: it is skipped and reported, so a link to
``/etc/passwd`` is never opened and a link to an image elsewhere on the disk never joins a split unnoticed.
``follow_symlinks=True`` follows such links too (datasets assembled from links on purpose). Links inside the
root are followed; a link to a folder inside the folder being walked is reached anyway and not followed again.
Every folder is entered once, by its resolved path, so a link cycle ends and a folder linked twice is not read
twice. An image-named link whose target does not exist is reported as broken, an unreadable folder in
:attr:`ImageWalk.unreadable`.

With an ``index_dir`` (the configs pass ``paths.cache_dir/walks``), the listing of every folder is kept in a
:class:`WalkIndex` of the root, keyed by the folder's resolved path and its modification time: adding, removing
or renaming a file changes its folder's mtime, so that folder alone is listed again, and the other jobs of a
sweep read the listings instead of walking the tree. A folder modified within :data:`RACY_NS` of its listing is
listed again next time (a file added in the same clock tick would not change the mtime). Links are resolved
on every walk, so the symlink rule sees their current targets.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterator
from pathlib import Path

from experiments.data.images import IMAGE_EXTENSIONS, is_image_file

#: why a link was skipped
LINK_LEAVES_ROOT = "link leaves the dataset"
BROKEN_LINK = "broken link"


@dataclass(frozen=True)
class SkippedLink:
    """A symbolic link a scan did not follow: its path, where it points, and why (:data:`LINK_LEAVES_ROOT` or
    :data:`BROKEN_LINK`)."""

    path: str
    target: str
    reason: str


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a scan builds millions of small objects that hold no cycles
    (paths, samples, records): its full passes over a growing heap would make the scan's cost per file grow with
    the dataset. Reference counting still frees everything; the collector resumes as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: a folder modified less than this before its listing is listed again on the next walk (2 s: FAT's mtime step)
RACY_NS = 2_000_000_000
#: kinds of a folder entry in a listing: image file, folder, symbolic link, other file
IMAGE, FOLDER, LINK, OTHER = "i", "d", "l", "o"
INDEX_VERSION = 1


class WalkIndex:
    """The folder listings of one walked root, in ``<index_dir>/<hash of the root>.json``, reused while the
    folder's mtime is unchanged (see the module docstring). ``listed`` counts the folders listed from the disk."""

    def __init__(self, index_dir: str | Path, root: str | Path, follow_symlinks: bool = False) -> None:
        key = hashlib.sha256(f"{os.path.realpath(root)}|{follow_symlinks}".encode()).hexdigest()[:20]
        self.path = Path(index_dir) / f"{key}.json"
        self.listed = 0
        self._dirs: dict[str, list] | None = None
        self._dirty = False

    def _load(self) -> dict[str, list]:
        if self._dirs is None:
            try:
                data = json.loads(self.path.read_text())
                self._dirs = data["dirs"] if data.get("version") == INDEX_VERSION else {}
            except (OSError, ValueError, KeyError, TypeError):
                self._dirs = {}
        return self._dirs

    def entries(self, folder: str | Path) -> list[tuple[str, str]]:
        """``(name, kind)`` of the entries of ``folder`` by name (kinds :data:`IMAGE`, :data:`FOLDER`,
        :data:`LINK`, :data:`OTHER`), from the index while the folder's mtime matches, else from the disk.
        Raises ``OSError`` for a folder that cannot be listed."""
        resolved = os.path.realpath(folder)
        mtime = os.stat(resolved).st_mtime_ns
        known = self._load().get(resolved)
        if known is not None and known[0] == mtime:
            return list(zip(known[2], known[3]))
        listed_at = time.time_ns()
        found = list_folder(folder)
        self.listed += 1
        if listed_at - mtime >= RACY_NS:
            self._dirs[resolved] = [mtime, listed_at, [n for n, _ in found], "".join(k for _, k in found)]
            self._dirty = True
        elif known is not None:
            del self._dirs[resolved]
            self._dirty = True
        return found

    def save(self) -> None:
        """Write the index (atomically) when a folder was listed; a folder that cannot be written costs the next
        walk a listing, nothing else."""
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"version": INDEX_VERSION, "dirs": self._dirs}))
            tmp.replace(self.path)
            self._dirty = False
        except OSError:
            pass


def list_folder(folder: str | Path) -> list[tuple[str, str]]:
    """``(name, kind)`` of the entries of ``folder``, by name (see :meth:`WalkIndex.entries`)."""
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_symlink():
            kind = LINK
        elif entry.is_dir(follow_symlinks=False):
            kind = FOLDER
        else:
            kind = IMAGE if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS else OTHER
        out.append((entry.name, kind))
    return out


@dataclass
class ImageWalk:
    """The image files under folders of one ``root``, by the suite's symlink rule (see the module docstring).

    ``skipped`` collects every link not followed (image-named file links and folder links), ``unreadable`` the
    folders that could not be listed (``(path, reason)``); ``ignored`` counts the files without an image
    extension. One walk serves one scan: the layouts call :meth:`images` per class folder, ``spectral-detect``
    per input folder.
    """

    root: Path
    follow_symlinks: bool = False
    skipped: list[SkippedLink] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    #: keep the folder listings in a :class:`WalkIndex` there (None = list every folder)
    index_dir: str | Path | None = None

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        self._entered: set[str] = set()
        self.index = WalkIndex(self.index_dir, self.root, self.follow_symlinks) if self.index_dir else None

    def save_index(self) -> None:
        """Keep the listings of this walk for the next one (with an ``index_dir``)."""
        if self.index is not None:
            self.index.save()

    def inside(self, path: str | Path) -> bool:
        """Whether ``path`` (already resolved) lies under the root."""
        return Path(path).is_relative_to(self.root)

    def admits(self, path: str | Path) -> bool:
        """Whether a file named explicitly (a manifest row) may be read: any file that is not a link leaving the
        root; a link that does is recorded in :attr:`skipped`."""
        path = Path(path)
        if not path.is_symlink():
            return True
        target = os.path.realpath(path)
        if not os.path.exists(target):
            self.skipped.append(SkippedLink(str(path), target, BROKEN_LINK))
            return False
        if self.follow_symlinks or self.inside(target):
            return True
        self.skipped.append(SkippedLink(str(path), target, LINK_LEAVES_ROOT))
        return False

    def images(self, folder: str | Path, recursive: bool = True) -> list[Path]:
        """The image files under ``folder``, depth first: each folder's files (by name), then its sub-folders.
        A ``folder`` that resolves outside the root (a linked generator or class folder) is itself a link leaving
        the root."""
        return [Path(p) for p in self.image_paths(folder, recursive)]

    def image_paths(self, folder: str | Path, recursive: bool = True) -> list[str]:
        """:meth:`images` as strings (a million ``Path`` objects cost seconds; the layouts need strings)."""
        resolved = os.path.realpath(folder)
        if not self.follow_symlinks and not self.inside(resolved):
            self._skip(Path(folder), resolved, LINK_LEAVES_ROOT)
            return []
        found: list[str] = []
        stack = [Path(folder)]
        self._entered.add(resolved)
        while stack:
            current = stack.pop()
            try:
                entries = self.index.entries(current) if self.index is not None else list_folder(current)
            except OSError as err:
                self.unreadable.append((str(current), err.strerror or str(err)))
                continue
            subdirs = []
            prefix = os.path.join(str(current), "")
            for name, kind in entries:
                if kind == IMAGE:
                    found.append(prefix + name)
                    continue
                if kind == OTHER:
                    self.ignored += 1
                    continue
                path = Path(current) / name
                is_dir = kind == FOLDER
                if kind == LINK:
                    target = os.path.realpath(path)
                    if not os.path.exists(target):
                        if is_image_file(path):
                            self._skip(path, target, BROKEN_LINK)
                        continue
                    if not self.follow_symlinks and not self.inside(target):
                        if os.path.isdir(target) or is_image_file(path):
                            self._skip(path, target, LINK_LEAVES_ROOT)
                        continue
                    is_dir = os.path.isdir(target)
                    if is_dir and Path(target).is_relative_to(resolved):
                        continue  # a folder of this walk: reached without the link
                if is_dir:
                    entered = os.path.realpath(path)
                    if recursive and entered not in self._entered:
                        self._entered.add(entered)
                        subdirs.append(path)
                elif is_image_file(path):
                    found.append(str(path))
                else:
                    self.ignored += 1
            stack.extend(reversed(subdirs))
        return found

    def skipped_under(self, folder: str | Path) -> list[SkippedLink]:
        """The links skipped at or under ``folder``."""
        base = Path(folder)
        return [s for s in self.skipped if Path(s.path) == base or Path(s.path).is_relative_to(base)]

    def _skip(self, path: Path, target: str, reason: str) -> None:
        self.skipped.append(SkippedLink(str(path), target, reason))
