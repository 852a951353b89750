"""Folder layouts of the supported datasets, scanned into labelled samples; one class per layout, chosen in
``conf/data/<name>.yaml`` by ``_target_``.

* :class:`GenImageFlat` and :class:`GenImageNested`: GenImage (Zhu et al., 2023, NeurIPS), the flat tree of
  Tiny GenImage and the demo data, and the original download;
* :class:`CNNDetection`: CNNDetection / ForenSynths (Wang et al., 2020, CVPR);
* :class:`Derm`: real vs synthetic dermatology, three split folders;
* :class:`Manifest`: any files, listed in a CSV.

Every layout checks the tree and raises :class:`DatasetLayoutError` with what it found, its expected tree
(``python -m experiments.data.layout_trees`` prints them) and the command that checks the data.
"""

from experiments.data.layouts.base import CLASS_NAMES, FAKE, REAL, DatasetLayoutError, Layout, Sample, real_source
from experiments.data.layouts.cnndetection import CNNDetection
from experiments.data.layouts.derm import Derm
from experiments.data.layouts.genimage import GenImageFlat, GenImageNested
from experiments.data.layouts.manifest import Manifest
from experiments.data.layouts.splits import Selection, holdout_split, limit_per_class

__all__ = ["CLASS_NAMES", "CNNDetection", "DatasetLayoutError", "Derm", "FAKE", "GenImageFlat", "GenImageNested",
           "Layout", "Manifest", "REAL", "Sample", "Selection", "holdout_split", "limit_per_class",
           "real_source"]
