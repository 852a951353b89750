"""Finding the images to score: files named explicitly, and image files in folders, with the symlink rules of
``detect`` (links leading out of a scanned folder are skipped unless followed on purpose)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from experiments.data.images import is_image_file
from experiments.inference.detection import DetectError, Skipped


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _scan_folder(folder: Path, recursive: bool, follow_symlinks: bool,
                 files: list[Path], skipped: list[Skipped]) -> int:
    """Append the image files under ``folder`` (sorted, depth first); return how many other files were ignored."""
    root = folder.resolve()
    seen_dirs = {root}
    ignored = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as err:
            skipped.append(Skipped(str(current), "unreadable folder", err.strerror or str(err)))
            continue
        subdirs = []
        for entry in entries:
            path = Path(current) / entry.name
            if entry.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.exists():
                    if is_image_file(path):
                        skipped.append(Skipped(str(path), "broken symlink"))
                    continue
                if not follow_symlinks and not _inside(target, root):
                    if target.is_dir() or is_image_file(path):
                        skipped.append(Skipped(str(path), "symlink outside folder", str(target)))
                    continue
                if target.is_dir():
                    # a link to a folder inside the scanned one is reached anyway; follow only outside ones
                    if follow_symlinks and recursive and target not in seen_dirs and not _inside(target, root):
                        seen_dirs.add(target)
                        subdirs.append(path)
                    continue
            elif entry.is_dir(follow_symlinks=False):
                if recursive:
                    seen_dirs.add(Path(entry.path).resolve())
                    subdirs.append(path)
                continue
            if is_image_file(path):
                files.append(path)
            else:
                ignored += 1
        stack.extend(reversed(subdirs))
    return ignored


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
