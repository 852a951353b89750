"""Loading trained detectors from a run folder, a weights file or an MLflow run id.

A trained detector is a resolved ``config.yaml`` plus its weights: a plain
state dict ``<model>.pth`` (loaded with ``torch.load(weights_only=True)``, so no
pickled code runs) or, for scikit-learn detectors, a ``<model>.skops`` file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.errors import UserError
from experiments.training.kinds import WEIGHTS_SUFFIXES, DetectorKind, LightningDetector, detector_kind

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class CheckpointNotFound(FileNotFoundError, UserError):
    """The reference names no usable trained detector."""


@dataclass
class LoadedDetector:
    """A trained detector: ``model`` is an ``nn.Module`` (in eval mode) or a fitted scikit-learn pipeline,
    ``kind`` the adapter that scores and explains it (:mod:`experiments.training.kinds`)."""

    model: Any
    cfg: DictConfig
    source: Path
    kind: DetectorKind = field(default_factory=LightningDetector)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """P(synthetic) for a ``(B, 3, H, W)`` batch, uint8 or float in [0, 1]."""
        return self.kind.predict_proba(self.model, images)


def _weights_in(folder: Path) -> Path | None:
    for pattern in (f"*{suffix}" for suffix in WEIGHTS_SUFFIXES):
        found = sorted(p for p in folder.glob(pattern))
        if found:
            return found[0]
    return None


def resolve_checkpoint(ref: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """``(config.yaml, weights)`` for a run folder, a weights file, or an MLflow run id."""
    ref_str = str(ref)
    path = Path(ref_str).expanduser()
    if path.is_dir():
        weights = _weights_in(path)
        config = path / "config.yaml"
    elif path.is_file():
        weights, config = path, path.parent / "config.yaml"
    elif RUN_ID.match(ref_str):
        return _download_run(ref_str, tracking_uri)
    else:
        raise CheckpointNotFound(
            f"ckpt={ref_str} is neither a run folder, a weights file nor an MLflow run id (32 hex characters)"
        )
    if weights is None:
        raise CheckpointNotFound(f"{path} holds no <model>.pth or <model>.skops file")
    if not config.is_file():
        raise CheckpointNotFound(f"{config} is missing: a detector needs the resolved config saved beside its weights")
    return config, weights


def _download_run(run_id: str, tracking_uri: str | None) -> tuple[Path, Path]:
    import mlflow

    from experiments.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri or "sqlite:///mlruns.db")
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        names = [a.path for a in client.list_artifacts(run_id)]
    except Exception as err:  # noqa: BLE001 - unknown run or unreachable store
        raise CheckpointNotFound(f"MLflow run {run_id} not found in {uri}: {err}") from None
    weight_names = [n for n in names if n.endswith(WEIGHTS_SUFFIXES)]
    if not weight_names or "config.yaml" not in names:
        raise CheckpointNotFound(f"MLflow run {run_id} has no weights/config artifacts (has: {names})")
    config = Path(client.download_artifacts(run_id, "config.yaml"))
    weights = Path(client.download_artifacts(run_id, weight_names[0]))
    return config, weights


def load_detector(ref: str | Path, tracking_uri: str | None = None, device: str | torch.device = "cpu") -> LoadedDetector:
    """Rebuild a detector from its saved config and load its weights safely."""
    config, weights = resolve_checkpoint(ref, tracking_uri)
    cfg = OmegaConf.load(config)
    if "backbone" in cfg.model:  # the trained weights replace any ImageNet initialisation
        with open_dict(cfg):
            cfg.model.backbone.pretrained = False
            cfg.model.backbone.weights_path = None
    kind = detector_kind(cfg)
    return LoadedDetector(kind.load(cfg, weights, device), cfg, weights, kind)
