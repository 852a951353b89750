"""Finding the image files under a folder, with one symlink rule for every scan of the suite.

A symbolic link whose target lies outside the *root* (the dataset root for training, evaluation and the data
check; the scanned folder for ``spectral-detect``) is not followed: it is skipped and reported, so a link to
``/etc/passwd`` is never opened and a link to an image elsewhere on the disk never joins a split unnoticed.
``follow_symlinks=True`` follows such links too (datasets assembled from links on purpose). Links inside the
root are followed; a link to a folder inside the folder being walked is reached anyway and not followed again.
Every folder is entered once, by its resolved path, so a link cycle ends and a folder linked twice is not read
twice. An image-named link whose target does not exist is reported as broken, an unreadable folder in
:attr:`ImageWalk.unreadable`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from experiments.data.images import is_image_file

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

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))
        self._entered: set[str] = set()

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
        resolved = os.path.realpath(folder)
        if not self.follow_symlinks and not self.inside(resolved):
            self._skip(Path(folder), resolved, LINK_LEAVES_ROOT)
            return []
        found: list[Path] = []
        stack = [Path(folder)]
        self._entered.add(resolved)
        while stack:
            current = stack.pop()
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError as err:
                self.unreadable.append((str(current), err.strerror or str(err)))
                continue
            subdirs = []
            for entry in entries:
                path = Path(current) / entry.name
                is_dir = entry.is_dir(follow_symlinks=False)
                if entry.is_symlink():
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
                    found.append(path)
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
