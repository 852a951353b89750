"""What every dataset layout shares: the labelled :class:`Sample`, the layout errors and the scan helpers.

A layout is a :class:`Layout` subclass chosen in ``conf/data/<name>.yaml`` by ``_target_``. It owns its scan
(``splits``: the suite's train / val / test samples of a root), its expected tree (what ``python -m
experiments.data.layout_trees`` prints and what its :class:`DatasetLayoutError` shows), the ``data=<name>``
command its errors suggest, and its class folder names.

Labels: real/nature = 0, synthetic/ai = 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable, Sequence

from experiments.errors import UserError
from experiments.data.images import IMAGE_EXTENSIONS
from experiments.data.layouts.tree import Node, render_tree
from experiments.data.walk import LINK_LEAVES_ROOT, ImageWalk

if TYPE_CHECKING:
    from experiments.data.layouts.splits import Selection

REAL, FAKE = 0, 1
#: how many found entries an error message shows.
FOUND_LIMIT = 8


class DatasetLayoutError(ValueError, UserError):
    """The dataset folder does not have the documented layout."""


#: Names of the two labels, everywhere in code and reports: real = 0, synthetic = 1. A dataset's own folder
#: names (nature/ai, 0_real/1_fake, real/synthetic) stay at the layout boundary (``real_dir`` / ``fake_dir``).
CLASS_NAMES: tuple[str, str] = ("real", "synthetic")


@dataclass(frozen=True)
class Sample:
    """One labelled image file.

    ``path`` is the file as found (under the root the layout scanned); ``relpath`` is its path relative to
    that root (POSIX separators; the absolute path for a file outside it, which a manifest may name). The seeded
    splits hash ``relpath``, so they are the same wherever the dataset or the clone lives. ``source`` is where a
    real image comes from (a camera, a photo collection), as a manifest's optional ``source`` column names it;
    empty elsewhere: :func:`real_source` then takes the generator folder.
    """

    path: str
    label: int
    generator: str
    relpath: str = ""
    source: str = ""

    @property
    def split_name(self) -> str:
        """The name the seeded splits hash: ``relpath``, or the absolute path when the sample has none."""
        return self.relpath or Path(os.path.abspath(self.path)).as_posix()


def real_source(sample: Sample) -> str:
    """The source of a real image: its ``source`` (a manifest's column) or else its generator, the folder a folder
    layout found it in (GenImage's ``<generator>/.../nature``, CNNDetection's category, derm's one name); empty for
    a synthetic image, which has a generator and no source."""
    if sample.label != REAL:
        return ""
    return getattr(sample, "source", "") or sample.generator


def relative_name(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` as a POSIX string, or its absolute path when it is not under ``root``."""
    name, base = str(path), str(root)
    if not (_normal(name) and _normal(base)):  # the walk's paths are: no abspath (a syscall-free, but slow, call)
        name, base = os.path.abspath(name), os.path.abspath(base)
    prefix = base.rstrip("/") + "/"
    if os.sep == "/" and name.startswith(prefix):  # the common case, without building Path objects
        return name[len(prefix):]
    name, base = Path(name), Path(base)
    return (name.relative_to(base) if name.is_relative_to(base) else name).as_posix()


def _normal(path: str) -> bool:
    """Whether ``path`` is absolute and normalised on POSIX (what ``os.path.abspath`` returns unchanged)."""
    marked = path + "/"
    return (os.sep == "/" and path[:1] == "/" and "//" not in path and "/./" not in marked
            and "/../" not in marked and (path == "/" or path[-1] != "/"))


def few(names: Iterable[object], limit: int = FOUND_LIMIT) -> str:
    """``names`` as a list literal, cut after ``limit`` entries with the number left out."""
    names = [str(n) for n in names]
    if len(names) <= limit:
        return repr(names)
    return repr(names[:limit])[:-1] + f", ... (+{len(names) - limit} more)]"


def subfolders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_known(requested: Sequence[str] | None, available: Sequence[str], key: str, where: object) -> list[str]:
    """``requested`` if every name is in ``available`` (all of ``available`` when None), else an error."""
    if not requested:
        return list(available)
    unknown = [g for g in requested if g not in available]
    if unknown:
        raise DatasetLayoutError(f"{key} lists {unknown}, not found under {where}; available: {list(available)}")
    return list(requested)


class Layout:
    """A dataset folder layout: how the files under a root become labelled train / val / test samples.

    Subclasses set :attr:`name` (the layout's name in messages and in ``layout_trees``) and :attr:`data_config`
    (the ``data=<name>`` that reads it), and implement :meth:`splits` and :meth:`tree_nodes`.
    """

    name: ClassVar[str]
    data_config: ClassVar[str]

    def __init__(self, real_dir: str = "", fake_dir: str = "") -> None:
        self.real_dir, self.fake_dir = real_dir, fake_dir

    def __repr__(self) -> str:
        return f"{type(self).__name__}(real_dir={self.real_dir!r}, fake_dir={self.fake_dir!r})"

    @property
    def class_names(self) -> tuple[str, str]:
        """How the two classes are called in this layout's messages."""
        return self.real_dir, self.fake_dir

    def splits(self, root: Path, selection: "Selection",
               walk: ImageWalk | None = None) -> tuple[list[Sample], list[Sample], list[Sample]]:
        """The suite's train / val / test samples under ``root`` for ``selection`` (before ``max_per_class``);
        ``walk`` finds the image files and keeps the links it skipped (default: a walk of ``root`` that
        follows no link out of it)."""
        raise NotImplementedError

    def tree_nodes(self) -> list[Node]:
        """The folders below the root, with this layout's class folder names."""
        raise NotImplementedError

    def release_order(self, root: str | Path) -> list[str]:
        """The generators oldest first, for ``experiment=chronological`` without ``data.generator_order``;
        only a layout with dates (the manifest's ``date`` column) knows it."""
        raise DatasetLayoutError(f"data.layout={self.name} has no release dates: give the release order with "
                                 f"data.generator_order=[oldest,...,newest] (or list the images in a manifest with "
                                 f"a date column, data=manifest)")

    def expected_tree(self, root: str | Path = "<root>") -> str:
        """The expected tree under ``root``, as the errors and ``python -m experiments.data.layout_trees`` show it."""
        return render_tree(f"{str(root).rstrip('/')}/", self.tree_nodes())

    def check_command(self, root: str | Path) -> str:
        """The command that checks the data of ``root`` once it is fixed."""
        return f"python run.py task=check_data data={self.data_config} data.root={root}"

    def error(self, root: Path, problem: str, hint: str = "") -> DatasetLayoutError:
        """``problem`` (what was found), the expected tree, an optional hint and the command to re-check."""
        return DatasetLayoutError(
            f"{problem}\nExpected layout (data.layout={self.name}):\n{self.expected_tree(root)}\n"
            + (f"{hint}\n" if hint else "")
            + f"Once fixed, check the data with: {self.check_command(root)}"
        )


@dataclass(frozen=True)
class ScanContext:
    """One scan of ``layout`` under ``root``: the class folder names, the errors (which name ``root``) and the
    :class:`~experiments.data.walk.ImageWalk` that finds the files (a new one of ``root`` when None)."""

    layout: Layout
    root: Path
    walk: ImageWalk | None = None

    def __post_init__(self) -> None:
        if self.walk is None:
            object.__setattr__(self, "walk", ImageWalk(self.root))

    @property
    def real_dir(self) -> str:
        return self.layout.real_dir

    @property
    def fake_dir(self) -> str:
        return self.layout.fake_dir

    def error(self, problem: str, hint: str = "") -> DatasetLayoutError:
        return self.layout.error(self.root, problem, hint)


def require_dir(path: Path, what: str, ctx: ScanContext) -> None:
    if not path.exists():
        parent = subfolders(path.parent)
        raise ctx.error(f"{what} {path} does not exist"
                        + (f" (found in {path.parent}: {few(parent)})." if parent else "."))
    if not path.is_dir():
        raise ctx.error(f"{what} {path} is not a directory.")


def class_images(split_dir: Path, class_name: str, ctx: ScanContext) -> list[str]:
    folder = split_dir / class_name
    if not folder.is_dir():
        found = subfolders(split_dir)
        raise ctx.error(
            f"class folder {folder} is missing (found: {few(found) if found else 'no sub-folders'}).",
            "If your class folders have other names, set data.layout.real_dir / data.layout.fake_dir.",
        )
    images = sorted(ctx.walk.image_paths(folder), key=_path_order)
    if not images:
        links = [s for s in ctx.walk.skipped_under(folder) if s.reason == LINK_LEAVES_ROOT]
        if links:
            raise ctx.error(
                f"class folder {folder} holds no images inside data.root: {len(links)} symlink(s) lead out of "
                f"{ctx.root} (e.g. {links[0].path} -> {links[0].target}).",
                "Links out of the dataset are not followed; set data.follow_symlinks=true if the dataset is "
                "assembled from links on purpose.",
            )
        stray = sorted(p.name for p in folder.iterdir())
        raise ctx.error(
            f"class folder {folder} holds no images with extensions {IMAGE_EXTENSIONS}"
            + (f" (found e.g. {few(stray, 5)})." if stray else " (it is empty).")
        )
    return images


def labelled(folder: Path, generator: str, ctx: ScanContext) -> list[Sample]:
    """The samples of ``folder/<real_dir>`` (label 0) and ``folder/<fake_dir>`` (label 1)."""
    root = os.path.abspath(ctx.root)
    return [Sample(path, label, generator, relative_name(path, root))
            for label, cls in ((REAL, ctx.real_dir), (FAKE, ctx.fake_dir))
            for path in class_images(folder, cls, ctx)]


def _path_order(path: str) -> list[str]:
    """The order of ``Path`` objects (component by component) for path strings."""
    return path.split(os.sep)
