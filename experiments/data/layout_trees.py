"""The expected folder tree of every dataset layout, rendered as an indented ASCII tree.

One source for the layout errors (``experiments.data.layouts``) and the README, so the two
never disagree. ``python -m experiments.data.layout_trees [layout ...]`` prints the trees as the
README shows them (root ``<root>``, default class folder names).

Layouts:

* ``genimage``: the flat GenImage tree of Tiny GenImage and the demo data;
* ``genimage_full``: the original GenImage download (Zhu et al., 2023, "GenImage: A Million-Scale
  Benchmark for Detecting AI-Generated Image", NeurIPS), one ``imagenet_*`` level deeper;
* ``cnndetection``: CNNDetection / ForenSynths (Wang et al., 2020, "CNN-generated images are
  surprisingly easy to spot... for now", CVPR);
* ``derm``: real vs synthetic dermatology, three split folders;
* ``manifest``: any files, listed in a CSV.
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Sequence


class Node(NamedTuple):
    """One folder (or file) of an expected tree, with a short note and its children."""

    name: str
    note: str = ""
    children: tuple["Node", ...] = ()


#: the class folder names each layout uses unless data.real_dir / data.fake_dir say otherwise.
DEFAULT_CLASS_DIRS: dict[str, tuple[str, str]] = {
    "genimage": ("nature", "ai"),
    "genimage_full": ("nature", "ai"),
    "cnndetection": ("0_real", "1_fake"),
    "derm": ("real", "synthetic"),
    "manifest": ("", ""),
}
LAYOUT_NAMES = tuple(DEFAULT_CLASS_DIRS)
#: the header of a manifest CSV.
MANIFEST_COLUMNS = ("path", "label", "generator", "split")
#: accepted manifest labels (case-insensitive) and their class.
MANIFEST_LABELS = {"0": 0, "real": 0, "nature": 0, "1": 1, "fake": 1, "ai": 1}


def render_tree(top: str, nodes: Sequence[Node]) -> str:
    """``top`` then ``nodes`` drawn with ``|--`` / ```--`` branches; notes aligned in one column."""
    rows: list[tuple[str, str]] = []

    def walk(children: Sequence[Node], prefix: str) -> None:
        for i, node in enumerate(children):
            last = i == len(children) - 1
            rows.append((prefix + ("`-- " if last else "|-- ") + node.name, node.note))
            walk(node.children, prefix + ("    " if last else "|   "))

    walk(nodes, "")
    width = max((len(head) for head, note in rows if note), default=0) + 2
    lines = [top] + [f"{head:<{width}}{note}" if note else head for head, note in rows]
    return "\n".join(lines)


def _classes(real: str, fake: str, notes: bool = True) -> tuple[Node, Node]:
    """The two class folders, in the order ``ls`` lists the layout's default names."""
    pair = (Node(f"{real}/", "real images (label 0)" if notes else ""),
            Node(f"{fake}/", "synthetic images (label 1)" if notes else ""))
    return tuple(sorted(pair, key=lambda n: n.name))  # type: ignore[return-value]


def _genimage_splits(real: str, fake: str) -> tuple[Node, Node]:
    return (Node("train/", "train split (the suite's val = a seeded hold-out of it)", _classes(real, fake)),
            Node("val/", "the suite's test split", _classes(real, fake, notes=False)))


def _genimage(real: str, fake: str) -> list[Node]:
    return [Node("<generator>/", "one per generator, e.g. midjourney, stable_diffusion_v_1_4",
                 _genimage_splits(real, fake))]


def _genimage_full(real: str, fake: str) -> list[Node]:
    inner = Node("<imagenet_...>/", "exactly one, e.g. imagenet_ai_0419_sdv4, imagenet_midjourney",
                 _genimage_splits(real, fake))
    return [Node("<Generator>/", "one per generator, e.g. ADM, BigGAN, Midjourney, stable_diffusion_v_1_4",
                 (inner,))]


def _cnndetection(real: str, fake: str) -> list[Node]:
    def per_class(note: str = "", notes: bool = False) -> Node:
        return Node("<class>/", note, _classes(real, fake, notes))

    return [
        Node("train/", "ProGAN training images (generator: data.train_generator)",
             (per_class("20 object classes: airplane, bicycle, ..., tvmonitor (data.classes)", True),)),
        Node("val/", "", (per_class(),)),
        Node("test/", "", (
            Node("<generator>/", "with classes, e.g. progan, stylegan, stylegan2, cyclegan", (per_class(),)),
            Node("<generator>/", "without classes, e.g. biggan, gaugan, stargan, deepfake",
                 _classes(real, fake, notes=False)),
        )),
    ]


def _derm(real: str, fake: str) -> list[Node]:
    return [Node(f"{split}/", "", _classes(real, fake, notes=split == "train")) for split in ("train", "val", "test")]


def _manifest(csv_name: str) -> list[Node]:
    return [
        Node(csv_name, "CSV with header " + ",".join(MANIFEST_COLUMNS) + " (data.manifest)"),
        Node("<any folders>/", "the images; CSV paths are relative to the CSV's folder, or absolute"),
    ]


MANIFEST_EXAMPLE = """\
{name}:
  path,label,generator,split
  real/0001.png,real,sdv14,train
  sdv14/0001.png,fake,sdv14,train
  /data/extra/0002.jpg,1,sdv14,test
  label: 0, real or nature = real; 1, fake or ai = synthetic (case-insensitive)
  split: train, val or test; without val rows, val is a seeded hold-out of train (data.val_fraction)"""


def expected_tree(
    layout: str,
    root: str = "<root>",
    real_dir: str | None = None,
    fake_dir: str | None = None,
    manifest: str = "manifest.csv",
) -> str:
    """The expected tree of ``layout`` under ``root``, with the given (or the default) class folder names.

    For ``manifest``, ``manifest`` is the CSV's name (or path relative to ``root``) and the tree is
    followed by the CSV format.
    """
    if layout not in DEFAULT_CLASS_DIRS:
        raise ValueError(f"unknown layout '{layout}'; the layouts are {list(LAYOUT_NAMES)}")
    default_real, default_fake = DEFAULT_CLASS_DIRS[layout]
    real, fake = real_dir or default_real, fake_dir or default_fake
    top = f"{str(root).rstrip('/')}/"
    if layout == "manifest":
        return render_tree(top, _manifest(manifest)) + "\n" + MANIFEST_EXAMPLE.format(name=manifest)
    builders = {"genimage": _genimage, "genimage_full": _genimage_full, "cnndetection": _cnndetection,
                "derm": _derm}
    return render_tree(top, builders[layout](real, fake))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the expected tree of the named layouts (all when none is named)."""
    names = list(argv if argv is not None else sys.argv[1:]) or list(LAYOUT_NAMES)
    unknown = [n for n in names if n not in DEFAULT_CLASS_DIRS]
    if unknown:
        print(f"unknown layout(s) {unknown}; the layouts are {list(LAYOUT_NAMES)}", file=sys.stderr)
        return 2
    print("\n\n".join(f"layout={n}\n{expected_tree(n)}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
