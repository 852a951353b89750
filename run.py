"""Entry point: ``python run.py [task=train] model=... data=...`` (Hydra); installed as ``spectral-suite``.

``task`` selects what runs (``conf/task/``): train, evaluate, analyze, ood_stress, report, runs, check_data,
cross_generator; ``python run.py --help`` lists them. Use ``-m`` for sweeps, e.g.
``python run.py -m model=resnet34_localfft,efficientnet_spatial seed=0,1,2``. Paths and the MLflow store are
the project's (``SUITE_ROOT``, default: this folder), whatever the working directory. An error meant for the
user prints its message alone, exit status 2 (``HYDRA_FULL_ERROR=1`` shows the traceback).

The command itself (the one Hydra main) is :func:`experiments.tasks.cli.main`; this file only makes the
process settings first, before torch is imported.
"""

from __future__ import annotations

from experiments.process import use_huge_pages

use_huge_pages()  # before torch is imported

from experiments.tasks.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
