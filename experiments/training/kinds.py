"""Kinds of detector: one adapter per kind, with one small interface.

A *kind* says how a detector of that kind is fitted, scored, saved, loaded and explained. The suite has
two: :class:`LightningDetector` (a ``detectors`` torch module trained by Lightning) and
:class:`SklearnPipeline` (a scikit-learn ``Pipeline`` whose first step turns images into features). A model
config names its kind by ``_target_``::

    kind:
      _target_: experiments.training.kinds.LightningDetector

so no code asks which kind it holds. A kind is built once per run, with what it needs
(``experiments.training.builders.build_kind``): the factories of the untrained detector (a net and its
LightningModule, or a scikit-learn estimator), of the trainer, the resume checkpoint and the weights file
name. ``fit``, ``load`` and ``throughput`` then need no config. A kind also holds the class of its post-hoc
calibrator (:mod:`experiments.evaluation.calibration`). A third kind (say, a frozen foundation-model probe)
is one subclass here and one config.
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from detectors.backbones import count_parameters
from experiments import tracking
from experiments.evaluation.calibration import Calibrator, PlattScaling, TemperatureScaling
from experiments.evaluation.metrics import binary_metrics
from experiments.evaluation.predictions import Predictions, predict_split
from experiments.safe_paths import inside, plain_name
from experiments.training.callbacks import ShareDataVerdict
from features.precision import as_unit_float

#: torch.autocast dtype of each Lightning precision (None = no autocast).
AUTOCAST_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16, "32-true": None}


@dataclass
class FitResult:
    """A fitted detector with its predictions on the val and test splits."""

    model: Any
    val: Predictions
    test: Predictions
    n_params: int


@dataclass
class Throughput:
    """Images/s of a few training steps, the peak CUDA memory (MiB) and whether every loss was finite."""

    images_per_s: float
    description: str
    cuda_max_alloc_mb: float = float("nan")
    finite: bool = True


def _missing(kind: str, part: str) -> Callable[..., Any]:
    def fail(*_: Any, **__: Any) -> Any:
        raise ValueError(f"this {kind} was built without its {part}; build it with "
                         "experiments.training.builders.build_kind(cfg)")
    return fail


class DetectorKind(ABC):
    """The interface of every kind of detector.

    Args:
        name: the model's name (``model.name``): the saved weights are ``<name><weights_suffix>``.
    """

    #: suffix of the saved weights (``<model.name><suffix>`` in the run folder).
    weights_suffix: ClassVar[str]
    #: class of the post-hoc calibrator fitted on the val split after fitting (``experiments.evaluation.calibration``).
    calibrator: ClassVar[type[Calibrator]]

    def __init__(self, name: str = "detector") -> None:
        self.name = name

    @abstractmethod
    def fit(self, datamodule, out_dir: Path, logger, data_error: BaseException | None = None) -> FitResult | None:
        """Fit on the datamodule's train split; predictions on val and test (None on a non-zero DDP rank).

        ``data_error`` is what rank 0's data check raised (``experiments.data.audit.preflight``; None: the data
        passed, or this is another rank): a kind raises it before fitting, on every rank it runs on."""

    @abstractmethod
    def predict_proba(self, model: Any, images: torch.Tensor) -> torch.Tensor:
        """P(synthetic) of a ``(B, 3, H, W)`` batch (uint8, or float in [0, 1]), on the CPU."""

    @abstractmethod
    def embed(self, model: Any, images: torch.Tensor) -> np.ndarray:
        """What the final classifier sees, ``(B, D)``: for t-SNE."""

    @abstractmethod
    def save(self, model: Any, path: Path) -> Path:
        """Save the fitted detector to ``path`` (safe formats only)."""

    @abstractmethod
    def load(self, path: Path, device: str | torch.device = "cpu") -> Any:
        """The detector with the weights at ``path``, ready to score."""

    @abstractmethod
    def log_mlflow_model(self, model: Any, example: np.ndarray, **log_args: Any) -> Any:
        """Log the fitted detector as an MLflow model taking ``example``-like float batches
        (:mod:`experiments.training.logged_model`, which gives ``log_args``); returns MLflow's ``ModelInfo``."""

    @abstractmethod
    def throughput(self, size: int, batch: int, steps: int, device: str = "cpu",
                   precision: str = "32-true", warmup: int = 1) -> Throughput:
        """Training speed on synthetic images of ``size`` px (``make bench``, ``make bench-gpu``)."""

    def supports_cam(self, model: Any) -> bool:
        """Whether Grad-CAM can explain ``model`` (it names its target layers)."""
        return callable(getattr(model, "cam_layers", None))

    def weights_path(self, out_dir: Path) -> Path:
        return inside(out_dir, f"{plain_name(self.name, 'model.name')}{self.weights_suffix}")


# -- torch / Lightning ---------------------------------------------------------------------------------------
class LightningDetector(DetectorKind):
    """A ``detectors`` module (``forward(x) -> (B,) logits``) trained by :class:`DetectorModule` under Lightning.

    Args:
        name: see :class:`DetectorKind`.
        net_factory: builds the untrained net (``model.net``).
        module_factory: wraps a net in its LightningModule (``model.module``, a :class:`DetectorModule`).
        trainer_factory: the Lightning ``Trainer`` of the run, given its MLflow logger and the callbacks to add to
            the configured ones.
        scorer_factory: a one-device, logger-free ``Trainer`` that scores val and test after distributed training.
        resume: the Lightning checkpoint an interrupted run resumes from (None: a new run).
    """

    weights_suffix = ".pth"
    #: temperature scaling of the logit (Guo et al., 2017): one parameter, the ranking is unchanged.
    calibrator = TemperatureScaling

    def __init__(self, name: str = "detector", net_factory: Callable[[], torch.nn.Module] | None = None,
                 module_factory: Callable[[torch.nn.Module], Any] | None = None,
                 trainer_factory: Callable[..., Any] | None = None, scorer_factory: Callable[[], Any] | None = None,
                 resume: str | None = None) -> None:
        super().__init__(name)
        self.net_factory = net_factory or _missing("LightningDetector", "net factory")
        self.module_factory = module_factory or _missing("LightningDetector", "LightningModule factory")
        self.trainer_factory = trainer_factory or _missing("LightningDetector", "trainer factory")
        self.scorer_factory = scorer_factory or _missing("LightningDetector", "scoring trainer factory")
        self.resume = resume

    def fit(self, datamodule, out_dir: Path, logger, data_error: BaseException | None = None) -> FitResult | None:
        """Under DDP rank 0's ``data_error`` reaches every rank in the trainer's ``setup`` (:class:`ShareDataVerdict`),
        the first moment the ranks can talk; a single process raises it there too."""
        trainer = self.trainer_factory(logger, [ShareDataVerdict(data_error)])
        if data_error is not None and trainer.world_size == 1:  # no other rank to tell: stop before building the net
            raise data_error
        module = self.module_factory(self.net_factory())
        if trainer.is_global_zero:
            logger.experiment.set_tag(logger.run_id, "precision", str(trainer.precision))
        with warnings.catch_warnings():
            # the module's uint8 -> float step is meant to run with our datamodule; Lightning says so on every fit
            warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule`")
            trainer.fit(module, datamodule=datamodule, ckpt_path=self.resume, weights_only=True)
        if not trainer.is_global_zero:
            return None
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
            tracking.log_artifact(logger, best, "checkpoints")
        tracking.log_artifact(logger, self.save(module.net, self.weights_path(out_dir)))
        tracking.log_artifact(logger, out_dir / "config.yaml", "checkpoints")
        names = datamodule.generator_names
        scorer = trainer if trainer.world_size == 1 else self.scorer_factory()  # every image scored once
        val = predict_split(scorer, module, datamodule.val_dataloader(), names)
        test = predict_split(scorer, module, datamodule.test_dataloader(), names)
        return FitResult(module.net.eval(), val, test, count_parameters(module.net))

    @torch.no_grad()
    def predict_proba(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        return torch.sigmoid(model(as_unit_float(images.to(device))).float()).cpu()

    @torch.no_grad()
    def embed(self, model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
        device = next(model.parameters()).device
        return model.forward_features(as_unit_float(images.to(device))).float().cpu().numpy()

    def save(self, model: torch.nn.Module, path: Path) -> Path:
        """The plain state dict (loadable with ``torch.load(weights_only=True)``)."""
        torch.save(model.state_dict(), path)
        return path

    def load(self, path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
        """A new net from the net factory (built without pretrained weights, ``build_kind(cfg, pretrained=False)``:
        the trained weights replace ImageNet's) with the state dict at ``path``."""
        net = self.net_factory()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.to(device).eval()

    def log_mlflow_model(self, model: torch.nn.Module, example: np.ndarray, **log_args: Any) -> Any:
        """A ``pt2`` program of the net and its sigmoid (``mlflow.pytorch``, pickle-free)."""
        from experiments.training.logged_model import log_torch_model

        return log_torch_model(model, example, **log_args)

    def throughput(self, size: int, batch: int, steps: int, device: str = "cpu",
                   precision: str = "32-true", warmup: int = 1) -> Throughput:
        """``steps`` optimisation steps on device-resident tensors under ``precision`` (``channels_last`` on
        CUDA, as runs use it)."""
        module = self.module_factory(self.net_factory()).to(device).train()
        memory_format = torch.channels_last if device == "cuda" else torch.contiguous_format
        module.net.to(memory_format=memory_format)
        opt = module.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, size, size, generator=gen).to(device).contiguous(memory_format=memory_format)
        y = (torch.arange(batch) % 2).float().to(device)
        dtype = AUTOCAST_DTYPES[precision]
        scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
        losses: list[torch.Tensor] = []

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = module(x)
            loss = module.criterion(logits.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach())

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):  # cuDNN autotuning, allocator
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = time.perf_counter() - start
        alloc = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
        return Throughput(steps * batch / seconds, f"{device.upper()} {precision}", alloc,
                          bool(torch.isfinite(torch.stack(losses)).all()))


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer measures it."""
    if device == "cuda":
        torch.cuda.synchronize()


# -- scikit-learn --------------------------------------------------------------------------------------------
class SklearnPipeline(DetectorKind):
    """A scikit-learn ``Pipeline`` (image features -> scaler -> classifier), built from ``model.estimator``.

    Fitting runs the stateless feature step batch by batch over the loaders (torch, batched), then fits the
    rest of the pipeline on the stacked feature vectors: no Lightning loop.

    Args:
        name: see :class:`DetectorKind`.
        estimator_factory: builds the unfitted pipeline (``model.estimator``).
    """

    weights_suffix = ".skops"
    #: Platt scaling (Platt, 1999) of the classifier's log-odds: a slope and an offset.
    calibrator = PlattScaling

    def __init__(self, name: str = "detector", estimator_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(name)
        self.estimator_factory = estimator_factory or _missing(type(self).__name__, "estimator factory")

    def fit(self, datamodule, out_dir: Path, logger, data_error: BaseException | None = None) -> FitResult:
        """One process: rank 0's ``data_error`` is raised at once."""
        from experiments.training.sklearn_io import count_estimator_parameters

        if data_error is not None:
            raise data_error
        pipeline = self.estimator_factory()
        features, head = pipeline[:1], pipeline[1:]
        x_train, y_train, _, _ = self.features_of(datamodule, "train", features)
        head.fit(x_train, y_train)
        names = datamodule.generator_names
        preds = []
        for split in ("val", "test"):
            x, y, g, index = self.features_of(datamodule, split, features)
            preds.append(Predictions(head.predict_proba(x)[:, 1], y, g, index, names))
        val = preds[0]
        step_metrics = {f"val/{k}": v for k, v in binary_metrics(val.prob, val.label).items()
                        if k in ("accuracy", "f1", "precision", "recall", "auc", "ap")}
        tracking.log_metrics(logger, step_metrics, step=0)
        tracking.log_artifact(logger, self.save(pipeline, self.weights_path(out_dir)))
        tracking.log_artifact(logger, out_dir / "config.yaml", "checkpoints")
        return FitResult(pipeline, val, preds[1], count_estimator_parameters(head[-1]))

    def features_of(self, datamodule, split: str, features):
        """``(features, labels, generator ids, indices)`` of a split: the feature step over its loader."""
        from experiments.training.sklearn_io import collect_features

        return collect_features(getattr(datamodule, f"{split}_dataloader")(), features)

    def predict_proba(self, model, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(model.predict_proba(as_unit_float(images.cpu()))[:, 1]).float()

    def embed(self, model, images: torch.Tensor) -> np.ndarray:
        """Every step but the classifier (features, then the scaler): what the linear classifier sees."""
        return np.asarray(model[:-1].transform(as_unit_float(images.cpu())), dtype=np.float64)

    def save(self, model, path: Path) -> Path:
        from experiments.training.sklearn_io import save_estimator

        return save_estimator(model, path)

    def load(self, path: Path, device: str | torch.device = "cpu"):
        from experiments.training.sklearn_io import load_estimator

        return load_estimator(path)

    def log_mlflow_model(self, model, example: np.ndarray, **log_args: Any) -> Any:
        """The pipeline in skops format (``mlflow.sklearn``, pickle-free), serving ``predict_proba``."""
        from experiments.training.logged_model import log_sklearn_model

        return log_sklearn_model(model, example, **log_args)

    def throughput(self, size: int, batch: int, steps: int, device: str = "cpu",
                   precision: str = "32-true", warmup: int = 1) -> Throughput:
        """``fit`` of the whole pipeline (features + classifier) on ``8 * batch`` random images."""
        pipeline = self.estimator_factory()
        n = 8 * batch
        x = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)
        start = time.perf_counter()
        pipeline.fit(x, np.arange(n) % 2)
        return Throughput(n / (time.perf_counter() - start), "CPU fit (features + classifier)")


class FrozenEncoderProbe(SklearnPipeline):
    """A linear head on a frozen encoder (UnivFD, Ojha et al., CVPR 2023): a :class:`SklearnPipeline` whose
    feature step is a frozen network, its features cached per image.

    The feature step names what its output depends on (``cache_id()``); with the split's file list and
    preprocessing it keys an ``.npz`` under ``feature_cache`` (``${paths.cache_dir}/features``; as
    ``experiments.data.cache`` keys decoded images), so the runs of a sweep over heads encode every image once.
    Splits with random preprocessing (``random_crop``, augmentation) are encoded afresh.

    Args:
        name, estimator_factory: see :class:`SklearnPipeline`.
        feature_cache: the folder of the cached features.
    """

    def __init__(self, name: str = "detector", estimator_factory: Callable[[], Any] | None = None,
                 feature_cache: str | Path | None = None) -> None:
        super().__init__(name, estimator_factory)
        self.feature_cache = None if feature_cache is None else Path(str(feature_cache))

    def features_of(self, datamodule, split: str, features):
        from experiments.training.sklearn_io import cached_features

        if self.feature_cache is None:
            raise ValueError("FrozenEncoderProbe was built without its feature_cache folder "
                             "(model.kind.feature_cache)")
        step = features[0] if hasattr(features, "steps") else features
        prep = datamodule.train_preprocess if split == "train" else datamodule.preprocess
        loader = getattr(datamodule, f"{split}_dataloader")()
        return cached_features(loader, features, self.feature_cache, f"{step.cache_id()}|{prep!r}", prep)


#: Every kind's weights suffix, to find a run folder's weights.
WEIGHTS_SUFFIXES = tuple(kind.weights_suffix for kind in (LightningDetector, SklearnPipeline))
