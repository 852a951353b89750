"""Loading trained detectors from a run folder, a weights file, an MLflow run id or an MLflow model URI.

``models:/<name>/<version>``, ``models:/<name>@<alias>`` and ``runs:/<run id>/model`` name the training run
that logged the model (:mod:`experiments.inference.model_uris`); the detector is loaded from that run.

A trained detector is a resolved ``config.yaml`` plus its weights: a plain
state dict ``<model>.pth`` (loaded with ``torch.load(weights_only=True)``, so no
pickled code runs) or, for scikit-learn detectors, a ``<model>.skops`` file, and the
``calibration.json`` that ``task=train`` writes beside them: the post-hoc calibrator and
the decision threshold fitted on the training run's validation split
(:mod:`experiments.evaluation.calibration`), so they travel with the detector.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.evaluation.abstention import ABSTAIN_KEY, AbstentionBand
from experiments.evaluation.calibration import CALIBRATION_FILE, Calibrator, calibrated_probs, read_calibration
from experiments.evaluation.operating_point import RECORD_KEY
from experiments.data.transforms import Preprocess
from experiments.errors import UserError, instantiate
from experiments.inference.model_uris import is_model_uri, source_run_id
from experiments.tracking import RUN_ID, download_run_artifact, mlflow_client
from experiments.training.builders import build_kind, without_pretrained_weights
from experiments.training.kinds import WEIGHTS_SUFFIXES, DetectorKind, LightningDetector

__all__ = ["RUN_ID", "CheckpointNotFound", "LoadedDetector", "find_calibration", "load_detector",
           "resolve_checkpoint", "resolve_reference"]


class CheckpointNotFound(FileNotFoundError, UserError):
    """The reference names no usable trained detector."""


@dataclass
class LoadedDetector:
    """A trained detector: ``model`` is an ``nn.Module`` (in eval mode) or a fitted scikit-learn pipeline,
    ``kind`` the adapter that scores and explains it (:mod:`experiments.training.kinds`)."""

    model: Any
    #: the run's saved config (``config.yaml``): this module reads it (name, preprocessing); tasks compose from it
    cfg: DictConfig
    source: Path
    kind: DetectorKind = field(default_factory=LightningDetector)
    #: the calibrator fitted on the training run's val split (None for runs saved without ``calibration.json``)
    calibrator: Calibrator | None = None
    #: the rest of ``calibration.json``: ``threshold`` (on raw P), ``threshold_calibrated``, ``fitted_on``, and the
    #: operating point and abstention band when the run chose them (:attr:`operating_point`, :attr:`abstention`)
    calibration: dict[str, Any] | None = None

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Raw P(synthetic) for a ``(B, 3, H, W)`` batch, uint8 or float in [0, 1]."""
        return self.kind.predict_proba(self.model, images)

    def calibrate(self, probs: Any) -> np.ndarray:
        """Raw P(synthetic) -> P(synthetic) after the training run's calibrator; raises without one."""
        if self.calibrator is None:
            raise ValueError(f"{self.source} has no {CALIBRATION_FILE} beside it (trained before calibration was "
                             "stored); re-train it, or use the raw P(synthetic)")
        return calibrated_probs(self.calibrator, probs)

    def predict_calibrated_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated P(synthetic) of a batch (see :meth:`calibrate`), in float64: near 0.5 a large temperature
        puts distinct images closer than float32 resolves, and the threshold and the abstention band are compared
        with it."""
        return torch.from_numpy(self.calibrate(self.predict_proba(images).double().numpy()))

    @property
    def name(self) -> str:
        """The run's ``model.name``."""
        return str(self.cfg.model.name)

    @property
    def native_views(self) -> bool:
        """``model.native_views`` of the run's config: ``eval.views=auto`` tiles large images at their native size
        (:mod:`experiments.inference.tiling`); False for runs saved without the key."""
        return bool(self.cfg.model.get("native_views", False))

    @functools.cached_property
    def preprocess(self) -> Preprocess:
        """The run's evaluation preprocessing (no random crop, no augmentation), from its training config."""
        data = self.cfg.data
        equalizer = data.get("equalizer")
        equalizer = None if equalizer is None else instantiate(equalizer)
        return Preprocess(int(data.crop_size), data.get("resize_size"), random_crop=False, equalizer=equalizer)

    @property
    def val_threshold(self) -> float | None:
        """The decision threshold on raw P chosen on the training run's val split, when stored."""
        return None if self.calibration is None else float(self.calibration["threshold"])

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The operating point the training run chose on its val reals (``spec``, ``target_fpr``, ``threshold``
        on raw P, ``fitted_on``, ``n_real``); None for runs saved without one."""
        record = (self.calibration or {}).get(RECORD_KEY)
        return None if record is None else dict(record)

    @property
    def operating_threshold(self) -> float | None:
        """The operating point's threshold on raw P(synthetic), when the run stored one."""
        record = self.operating_point
        return None if record is None else float(record["threshold"])

    @property
    def abstention(self) -> AbstentionBand | None:
        """The abstention band on raw P(synthetic) the training run stored (``eval.abstain``); None without one."""
        record = (self.calibration or {}).get(ABSTAIN_KEY)
        return None if record is None else AbstentionBand.from_record(record)


def _weights_in(folder: Path) -> Path | None:
    for pattern in (f"*{suffix}" for suffix in WEIGHTS_SUFFIXES):
        found = sorted(p for p in folder.glob(pattern))
        if found:
            return found[0]
    return None


def resolve_reference(ref: str | Path, tracking_uri: str | None = None) -> str | Path:
    """``ref`` with a ``models:/`` or ``runs:/`` URI replaced by the id of the training run behind it
    (:func:`experiments.inference.model_uris.source_run_id`); any other reference unchanged."""
    return source_run_id(str(ref), tracking_uri) if is_model_uri(ref) else ref


def resolve_checkpoint(ref: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """``(config.yaml, weights)`` for a run folder, a weights file, an MLflow run id or model URI."""
    ref_str = str(resolve_reference(ref, tracking_uri))
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
            f"ckpt={ref_str} is neither a run folder, a weights file, an MLflow run id (32 hex characters) nor an "
            "MLflow model URI (models:/<name>/<version>, models:/<name>@<alias>, runs:/<run id>/model)"
        )
    if weights is None:
        raise CheckpointNotFound(f"{path} holds no <model>.pth or <model>.skops file")
    if not config.is_file():
        raise CheckpointNotFound(f"{config} is missing: a detector needs the resolved config saved beside its weights")
    return config, weights


def _download_run(run_id: str, tracking_uri: str | None) -> tuple[Path, Path]:
    client = mlflow_client(tracking_uri)
    try:
        names = [a.path for a in client.list_artifacts(run_id)]
    except Exception as err:  # noqa: BLE001 - unknown run or unreachable store
        raise CheckpointNotFound(f"MLflow run {run_id} not found in {client.tracking_uri}: {err}") from None
    weight_names = [n for n in names if n.endswith(WEIGHTS_SUFFIXES)]
    if not weight_names or "config.yaml" not in names:
        raise CheckpointNotFound(f"MLflow run {run_id} has no weights/config artifacts (has: {names})")
    return download_run_artifact(client, run_id, "config.yaml"), download_run_artifact(client, run_id, weight_names[0])


def load_detector(ref: str | Path, tracking_uri: str | None = None, device: str | torch.device = "cpu") -> LoadedDetector:
    """Rebuild a detector from its saved config and load its weights safely (``ref``: as
    :func:`resolve_checkpoint` takes it)."""
    ref = resolve_reference(ref, tracking_uri)
    config, weights = resolve_checkpoint(ref, tracking_uri)
    cfg = without_pretrained_weights(OmegaConf.load(config))  # the trained weights replace ImageNet's
    kind = build_kind(cfg, pretrained=False)
    calibrator, record = None, None
    calibration_file = find_calibration(ref, weights, tracking_uri)
    if calibration_file is not None:
        calibrator, record = read_calibration(calibration_file, kind.calibrator)
    return LoadedDetector(kind.load(weights, device), cfg, weights, kind, calibrator, record)


def find_calibration(ref: str | Path, weights: Path, tracking_uri: str | None = None) -> Path | None:
    """The ``calibration.json`` beside ``weights``, or the MLflow run's artifact of that name; None when absent."""
    beside = Path(weights).parent / CALIBRATION_FILE
    if beside.is_file():
        return beside
    ref_str = str(ref)
    if not RUN_ID.match(ref_str) or Path(ref_str).exists():
        return None
    client = mlflow_client(tracking_uri)
    if CALIBRATION_FILE not in {a.path for a in client.list_artifacts(ref_str)}:
        return None
    return download_run_artifact(client, ref_str, CALIBRATION_FILE)
