"""Entry point: ``python run.py [task=train] model=... data=...`` (Hydra).

``task`` selects what runs (``conf/task/``): train, evaluate, analyze,
ood_stress, report, check_data. Use ``-m`` for sweeps, e.g.
``python run.py -m model=resnet34_localfft,efficientnet_spatial seed=0,1,2``.
"""

from __future__ import annotations

from experiments.process import use_huge_pages

use_huge_pages()  # before torch is imported

import hydra  # noqa: E402
from hydra.utils import get_method  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return get_method(cfg.task.fn)(cfg)


if __name__ == "__main__":
    main()
