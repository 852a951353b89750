"""Print the expected folder tree of every dataset layout, as the README shows it.

``python -m experiments.data.layout_trees [layout ...]`` prints the trees of the named layouts (all when none
is named) with the root ``<root>`` and each layout's default class folder names. Each layout class owns its
tree (:meth:`~experiments.data.layouts.base.Layout.expected_tree`); its errors show the same tree.
"""

from __future__ import annotations

import sys
from typing import Sequence

from experiments.data.layouts import CNNDetection, Derm, GenImageFlat, GenImageNested, Layout, Manifest

#: the layouts this command prints, in the README's order, with their default class folder names.
PRINTED: tuple[Layout, ...] = (GenImageFlat(), GenImageNested(), CNNDetection(), Derm(), Manifest())


def main(argv: Sequence[str] | None = None) -> int:
    """Print the expected tree of the named layouts (all when none is named)."""
    names = list(argv if argv is not None else sys.argv[1:]) or [layout.name for layout in PRINTED]
    known = [layout.name for layout in PRINTED]
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown layout(s) {unknown}; the layouts are {known}", file=sys.stderr)
        return 2
    print("\n\n".join(f"layout={layout.name}\n{layout.expected_tree()}"
                      for name in names for layout in PRINTED if layout.name == name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
