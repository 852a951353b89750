"""Experiment layer of the suite: data, Lightning module, tasks, tracking and benchmarks.

Importing it (``run.py`` and every ``python -m experiments.<module>`` do so before
torch) turns on PyTorch's transparent-huge-page backing of large CPU tensors
(``THP_MEM_ALLOC_ENABLE``, read by torch at its first allocation). A 64 x 3 x
224 x 224 float batch is 38 MB; without it, glibc serves every such tensor with
a fresh ``mmap`` that is page-faulted in 4 KB at a time on each call (about ten
thousand faults), which costs the CPU features up to half their time
(``make bench``, docs/scaling.md). Set ``THP_MEM_ALLOC_ENABLE=0`` in the environment to turn it off;
it has no effect when the kernel's ``transparent_hugepage`` mode is ``never``.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
