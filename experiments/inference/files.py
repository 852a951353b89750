"""Finding the images to score: files named explicitly, and image files in folders, with the symlink rules of
``detect`` (links leading out of a scanned folder are skipped unless followed on purpose)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from experiments.data.walk import BROKEN_LINK, ImageWalk
from experiments.inference.detection import DetectError, Skipped


def _scan_folder(folder: Path, recursive: bool, follow_symlinks: bool,
                 files: list[Path], skipped: list[Skipped]) -> int:
    """Append the image files under ``folder`` (depth first, by name) by the suite's symlink rule with ``folder``
    as the root (:class:`~experiments.data.walk.ImageWalk`); return how many other files were ignored."""
    walk = ImageWalk(folder, follow_symlinks)
    files.extend(walk.images(folder, recursive))
    skipped.extend(Skipped(path, "unreadable folder", reason) for path, reason in walk.unreadable)
    skipped.extend(Skipped(link.path, "broken symlink") if link.reason == BROKEN_LINK
                   else Skipped(link.path, "symlink outside folder", link.target) for link in walk.skipped)
    return walk.ignored


def collect_images(inputs: Iterable[str | Path], recursive: bool = True,
                   follow_symlinks: bool = False) -> tuple[list[Path], list[Skipped], int]:
    """Image files named by ``inputs`` (files or folders): ``(files, skipped, ignored_count)``.

    A file named explicitly is always tried, whatever its extension. In a folder, only files
    with an image extension are taken; symlinks whose target lies outside that folder are
    skipped unless ``follow_symlinks``. Raises :class:`DetectError` for a path that does not exist.
    """
    files: list[Path] = []
    skipped: list[Skipped] = []
    ignored = 0
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            ignored += _scan_folder(path, recursive, follow_symlinks, files, skipped)
        elif path.exists():
            files.append(path)
        elif path.is_symlink():
            skipped.append(Skipped(str(path), "broken symlink"))
        else:
            raise DetectError(f"input {item} does not exist (expected an image file or a folder of images)")
    unique = list(dict.fromkeys(files))
    return unique, skipped, ignored
