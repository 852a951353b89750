"""Entry point: ``python run.py [task=train] model=... data=...`` (Hydra); installed as ``spectral-suite``.

``task`` selects what runs (``conf/task/``): train, evaluate, analyze, ood_stress, report, runs, check_data,
cross_generator; ``python run.py --help`` lists them. Use ``-m`` for sweeps, e.g.
``python run.py -m model=resnet34_localfft,efficientnet_spatial seed=0,1,2``. Paths and the MLflow store are
the project's (``SUITE_ROOT``, default: this folder), whatever the working directory. An error meant for the
user prints its message alone, exit status 2 (``HYDRA_FULL_ERROR=1`` shows the traceback).
"""

from __future__ import annotations

from experiments.process import use_huge_pages, use_project_root

use_huge_pages()  # before torch is imported
use_project_root()  # paths.root_dir and the MLflow store: the project's, whatever the working directory

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from experiments.tasks.cli import run_task  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_task(cfg)


if __name__ == "__main__":
    main()
