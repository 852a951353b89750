"""``task=ood_stress``: trained detectors under the perturbation grid of ``cfg.ood``.

For every detector and every (perturbation, strength) of the grid, the test
split of ``cfg.data`` is scored in deployment order (``ood.order:
before_preprocessing``, the default): each file is decoded, the perturbation
(JPEG re-encoding, resizing, blur, noise) is applied to that decoded image at its
native size (``experiments.data.perturbations.perturb_image``), and then the
detector's own preprocessing (``data.equalizer``, ``data.resize_size``,
``data.crop_size`` of its saved config) and forward (normalisation, FFT features)
run on the result. An equalizer therefore sees, and may undo, the degradation, as
it would on a deployed image. ``ood.order: after_preprocessing`` keeps the older
order: the file is preprocessed first and the perturbation is applied to the
preprocessed float batches with
``experiments.data.perturbations.apply(x, p, cfg.seed, sample_ids=batch["index"])``.

In both orders detectors that share a preprocessing share the batches, so they
see exactly the same pixels, and the noise of one image depends only on the seed,
the perturbation and the image's dataset index. Before preprocessing the loop is
perturbation -> batch -> detector (each file is decoded once per grid point);
after it, batch -> perturbation -> detector (once per preprocessing). Only the
scores are kept in memory, so large test sets stream.

Outputs:

* MLflow: one new run per detector, tagged ``task=ood_stress``,
  ``evaluated_run=<source run id or path>`` and ``model``, in the experiment
  ``ood_stress-<data>`` (``logger.task_experiment_name``), with the
  metrics ``ood/<perturbation>/<strength>/{auc,ap,accuracy}``;
* ``<paths.report_dir>/ood_stress/``: ``robustness_<perturbation>.png`` (AUROC
  versus strength, one line per detector), ``ood_auroc.md`` / ``ood_auroc.csv``
  (rows = detector, columns = ``<perturbation>/<strength>`` AUROC) and
  ``ood_metrics.csv`` (long format, every metric); these are logged to every
  detector run under ``ood_stress/`` and the table is printed.

Which detectors: ``ckpt=<run id | run folder | weights file>`` or a list
``ckpt=[id1,id2]``; with the default ``ckpt=null`` the latest finished
``task=train`` run of each model of ``task.models`` in the experiment
``cfg.logger.experiment_name``. When there is none and ``data=demo``, the
models are first trained on the demo data by running, as a subprocess, the
same command as ``make demo``::

    python run.py -m experiment=demo model=<task.models joined by ','>

A subprocess (rather than an in-process ``train(cfg)``) gives each training job
its own Hydra run folder, logging and Lightning state, exactly as a user's own
``make demo`` would. Set ``task.train_if_missing=false`` to get the command in an
error message instead.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from experiments.errors import instantiate
from mlflow.entities import Metric, Param
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from experiments.inference.loading import RUN_ID, LoadedDetector, load_detector
from experiments.evaluation.metrics import binary_metrics
from experiments.data.dataset import PerturbedImageDataset, collate_skipping
from experiments.data.perturbations import (
    Perturbation,
    apply,
    metric_prefix,
    perturb_image,
    perturbation_grid,
    perturbation_order,
)
from experiments.evaluation.curves import plot_robustness_curves
from experiments.runs import ExperimentNotFound, finished_training_runs, newest_per_key
from experiments.runs import NoRunsFound
from experiments.tracking import resolve_tracking_uri
from experiments.tracking import announce_outputs, task_experiment_name
from experiments.tracking import experiment_id as tracking_experiment_id
from experiments.process import progress
from features.precision import as_unit_float

log = logging.getLogger(__name__)

#: Metrics logged per detector and grid point, as ``ood/<perturbation>/<strength>/<metric>``.
OOD_METRICS: tuple[str, ...] = ("auc", "ap", "accuracy")

#: x-axis label of the robustness curve of each perturbation kind.
X_LABELS = {
    "gaussian_noise": "noise sigma (0-255 scale)",
    "jpeg": "JPEG quality",
    "gaussian_blur": "blur sigma (px)",
    "downscale": "scale factor",
}

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"


@dataclass
class Detector:
    """A detector under test: ``label`` names it in tables and plots; ``ref`` is what was evaluated."""

    label: str
    ref: str
    loaded: LoadedDetector
    experiment_id: str | None = None


# -- which detectors ---------------------------------------------------------------------------------
def as_ref_list(ckpt: Any) -> list[str]:
    """``ckpt`` as a list of references: None -> [], ``"a,b"`` -> ["a", "b"], a list stays a list."""
    if ckpt is None:
        return []
    if isinstance(ckpt, (list, tuple, ListConfig)):
        return [str(c).strip() for c in ckpt if str(c).strip()]
    return [part.strip() for part in str(ckpt).split(",") if part.strip()]


def latest_train_runs(client: mlflow.MlflowClient, experiment_name: str, models: Sequence[str] | None) -> list:
    """The newest finished ``task=train`` run of each model (restricted to ``models`` unless None), by model name."""
    try:
        runs = finished_training_runs(client, experiment_name)
    except ExperimentNotFound:
        return []

    def model_of(run) -> str | None:
        model = run.data.tags.get("model")
        return model if model and (models is None or model in models) else None

    return sorted(newest_per_key(runs, model_of), key=model_of)


def _override(key: str, value: Any) -> str:
    """A Hydra command-line override with the value quoted (safe for paths and URIs)."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"{key}='{text}'"


def training_command(cfg: DictConfig, models: Sequence[str]) -> list[str]:
    """The ``run.py`` multirun that trains ``models`` on the demo data into this config's MLflow experiment."""
    return [
        sys.executable, str(RUN_PY), "-m", "experiment=demo", f"model={','.join(models)}",
        _override("paths.root_dir", cfg.paths.root_dir),
        _override("logger.tracking_uri", cfg.logger.tracking_uri),
        _override("logger.experiment_name", cfg.logger.experiment_name),
        f"seed={cfg.seed}",
    ]


def train_missing_models(cfg: DictConfig, models: Sequence[str]) -> None:
    """Train ``models`` on the demo data in a subprocess, or raise with the command to run."""
    command = training_command(cfg, models)
    printable = " ".join(command[1:])
    if cfg.data.name != "demo":
        raise NoRunsFound(
            f"no finished training runs of {list(models)} in MLflow experiment '{cfg.logger.experiment_name}'. "
            f"Train them first, e.g. `python run.py -m data={cfg.data.name} data.root=... model={','.join(models)}`, "
            f"or pass ckpt=<run id | run folder>"
        )
    if not cfg.task.get("train_if_missing", True):
        raise NoRunsFound(
            f"no finished training runs in MLflow experiment '{cfg.logger.experiment_name}'; run `make demo` or "
            f"`python {printable}` first, or pass ckpt=<run id | run folder>"
        )
    log.info("no trained detectors found; training them on the demo data: python %s", printable)
    subprocess.run(command, check=True)


def resolve_detectors(cfg: DictConfig, client: mlflow.MlflowClient, tracking_uri: str) -> list[Detector]:
    """Load the detectors named by ``cfg.ckpt``, or the latest training run of each model (training if needed)."""
    refs = as_ref_list(cfg.get("ckpt"))
    found: list[tuple[str, str | None]] = []  # (ref, experiment id)
    if refs:
        found = [(ref, None) if RUN_ID.match(ref) else (str(Path(ref).resolve()), None) for ref in refs]
    else:
        models = list(cfg.task.models) if cfg.task.get("models") else None
        runs = latest_train_runs(client, cfg.logger.experiment_name, models)
        if not runs:
            train_missing_models(cfg, models or [cfg.model.name])
            runs = latest_train_runs(client, cfg.logger.experiment_name, models)
            if not runs:
                raise NoRunsFound(f"training left no finished runs in '{cfg.logger.experiment_name}'")
        found = [(r.info.run_id, r.info.experiment_id) for r in runs]
    detectors = []
    for ref, experiment_id in found:
        loaded = load_detector(ref, tracking_uri, device=_device(cfg.task.get("device", "auto")))
        if experiment_id is None and RUN_ID.match(ref):  # log next to the evaluated run
            experiment_id = client.get_run(ref).info.experiment_id
        detectors.append(Detector(loaded.cfg.model.name, ref, loaded, experiment_id))
    _deduplicate_labels(detectors)
    return detectors


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _deduplicate_labels(detectors: list[Detector]) -> None:
    """Two detectors of one model get ``<model>-<short ref>`` labels."""
    counts = defaultdict(int)
    for det in detectors:
        counts[det.label] += 1
    for det in detectors:
        if counts[det.label] > 1:
            short = det.ref[:8] if RUN_ID.match(det.ref) else Path(det.ref).parent.name or det.ref
            det.label = f"{det.label}-{short}"


# -- data: one test loader per preprocessing --------------------------------------------------------
def preprocessing_of(detector: Detector) -> tuple[int, int | None, str]:
    """What a detector's input pipeline depends on: crop size, resize size and equalizer config."""
    data = detector.loaded.cfg.data
    equalizer = data.get("equalizer")
    key = OmegaConf.to_yaml(equalizer, resolve=True) if isinstance(equalizer, DictConfig) else str(equalizer)
    return int(data.crop_size), (None if data.get("resize_size") is None else int(data.resize_size)), key


def build_test_loader(cfg: DictConfig, detector: Detector) -> DataLoader:
    """The test split of ``cfg.data`` (root, generators) with ``detector``'s own preprocessing sizes."""
    return build_test_datamodule(cfg, detector).test_dataloader()


def build_test_datamodule(cfg: DictConfig, detector: Detector):
    """The datamodule of ``cfg.data`` (root, generators) with ``detector``'s own preprocessing, set up."""
    data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    own = detector.loaded.cfg.data
    data.crop_size = own.crop_size
    data.resize_size = own.get("resize_size")
    data.equalizer = own.get("equalizer")
    data.train_augment = None
    data.persistent_workers = False
    if own.get("name") != cfg.data.name:
        log.info("%s was trained on data=%s, evaluated on data=%s", detector.label, own.get("name"), cfg.data.name)
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def _perturb_file(perturbation: Perturbation, seed: int, image, index: int):
    return perturb_image(image, perturbation, seed, index)


def perturbed_test_loader(datamodule, perturbation: Perturbation, seed: int) -> DataLoader:
    """The test files of ``datamodule``, each perturbed as a decoded image and then preprocessed by the
    datamodule's own (evaluation) preprocessing, equalizer included."""
    import functools

    dataset = PerturbedImageDataset(datamodule.datasets["test"].samples, datamodule.preprocess,
                                    datamodule.generator_names, functools.partial(_perturb_file, perturbation, seed))
    workers = datamodule.num_workers
    return DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_skipping, multiprocessing_context=datamodule._worker_context())


# -- scoring -------------------------------------------------------------------------------------------
def tensor_digest(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values (to recognise identical perturbed batches)."""
    data = x.detach().cpu().contiguous()
    return hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode() + data.numpy().tobytes()).hexdigest()


def score_group(detectors: Sequence[Detector], loader: DataLoader, grid: Sequence[Perturbation], seed: int,
                ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """P(synthetic) of each detector at each grid point over ``loader``: ``({label: {key: probs}}, labels)``.

    All ``detectors`` must share one preprocessing (they receive the same tensors). Grid points
    that leave a batch unchanged (the clean baselines) are scored once per batch and reused.
    """
    probs: dict[str, dict[str, list[torch.Tensor]]] = {d.label: {p.key: [] for p in grid} for d in detectors}
    labels: list[torch.Tensor] = []
    for batch in progress(loader, f"OOD stress: {len(detectors)} detector(s) x {len(grid)} settings"):
        if batch.get("empty"):
            continue
        images, ids = as_unit_float(batch["image"]), batch["index"]
        labels.append(batch["label"].reshape(-1))
        done: dict[str, dict[str, torch.Tensor]] = {}  # identical inputs (noise 0, blur 0, scale 1) run once
        for perturbation in grid:
            x = apply(images, perturbation, seed, sample_ids=ids)
            digest = tensor_digest(x)
            if digest not in done:
                done[digest] = {det.label: det.loaded.predict_proba(x).reshape(-1) for det in detectors}
            for det in detectors:
                probs[det.label][perturbation.key].append(done[digest][det.label])
    if not labels:
        raise ValueError("the test split has no readable images")
    out = {label: {key: torch.cat(parts).numpy() for key, parts in by_key.items()} for label, by_key in probs.items()}
    return out, torch.cat(labels).numpy()


def score_group_before_preprocessing(detectors: Sequence[Detector], datamodule, grid: Sequence[Perturbation],
                                     seed: int) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """As :func:`score_group`, in deployment order: each grid point perturbs the decoded files, then the shared
    preprocessing runs (:func:`perturbed_test_loader`). Batches identical to one already scored (the clean
    baselines) are scored once."""
    probs: dict[str, dict[str, np.ndarray]] = {d.label: {} for d in detectors}
    labels = None
    done: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for perturbation in grid:
        parts: dict[str, list[torch.Tensor]] = {d.label: [] for d in detectors}
        point_labels = []
        batches = (b for b in perturbed_test_loader(datamodule, perturbation, seed) if not b.get("empty"))
        for number, batch in enumerate(batches):
            x = as_unit_float(batch["image"])
            key = (number, tensor_digest(x))
            if key not in done:
                done[key] = {det.label: det.loaded.predict_proba(x).reshape(-1) for det in detectors}
            for det in detectors:
                parts[det.label].append(done[key][det.label])
            point_labels.append(batch["label"].reshape(-1))
        if not point_labels:
            raise ValueError("the test split has no readable images")
        for det in detectors:
            probs[det.label][perturbation.key] = torch.cat(parts[det.label]).numpy()
        labels = torch.cat(point_labels).numpy()
    return probs, labels


def evaluate_detectors(cfg: DictConfig, detectors: Sequence[Detector], grid: Sequence[Perturbation],
                       ) -> dict[str, dict[str, dict[str, float]]]:
    """``{detector label: {"<perturbation>/<strength>": {"auc", "ap", "accuracy", "n"}}}``, in ``ood.order``."""
    order = perturbation_order(cfg.ood)
    groups: dict[tuple, list[Detector]] = defaultdict(list)
    for det in detectors:
        groups[preprocessing_of(det)].append(det)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for members in groups.values():
        datamodule = build_test_datamodule(cfg, members[0])
        if order == "before_preprocessing":
            probs, labels = score_group_before_preprocessing(members, datamodule, grid, int(cfg.seed))
        else:
            probs, labels = score_group(members, datamodule.test_dataloader(), grid, int(cfg.seed))
        for det in members:
            results[det.label] = {}
            for p in grid:
                metrics = binary_metrics(probs[det.label][p.key], labels)
                results[det.label][p.key] = {m: metrics[m] for m in (*OOD_METRICS, "n")}
    return {d.label: results[d.label] for d in detectors}


# -- outputs -------------------------------------------------------------------------------------------
def _x_value(perturbation: Perturbation, position: int) -> float:
    return float(position) if isinstance(perturbation.strength, tuple) else float(perturbation.strength)


def write_curves(results: dict, grid: Sequence[Perturbation], cfg_ood: DictConfig, out_dir: Path) -> list[Path]:
    """One ``robustness_<perturbation>.png`` per perturbation: AUROC versus strength, one line per detector."""
    by_name: dict[str, list[Perturbation]] = defaultdict(list)
    for p in grid:
        by_name[p.name].append(p)
    paths = []
    for name, points in by_name.items():
        kind = cfg_ood.perturbations[name].kind
        if kind == "compose":
            xlabel = "setting: " + ", ".join(f"{i}={p.label}" for i, p in enumerate(points))
        else:
            xlabel = X_LABELS.get(kind, "strength")
        curves = {label: [(_x_value(p, i), res[p.key]["auc"]) for i, p in enumerate(points)]
                  for label, res in results.items()}
        path = out_dir / f"robustness_{name}.png"
        plot_robustness_curves(curves, path, xlabel=xlabel, ylabel="AUROC", title=f"OOD stress: {name}")
        paths.append(path)
    return paths


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def write_tables(results: dict, grid: Sequence[Perturbation], out_dir: Path) -> tuple[Path, Path, Path]:
    """``ood_auroc.md`` / ``ood_auroc.csv`` (detector x grid point AUROC) and the long ``ood_metrics.csv``."""
    keys = [p.key for p in grid]
    md = out_dir / "ood_auroc.md"
    lines = ["# OOD stress: AUROC per perturbation/strength", "",
             "| detector | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {label} | " + " | ".join(_fmt(res[k]["auc"]) for k in keys) + " |" for label, res in results.items()]
    md.write_text("\n".join(lines) + "\n")
    wide = out_dir / "ood_auroc.csv"
    with wide.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["detector", *keys])
        for label, res in results.items():
            writer.writerow([label, *(res[k]["auc"] for k in keys)])
    long = out_dir / "ood_metrics.csv"
    with long.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["detector", "perturbation", "strength", *OOD_METRICS, "n"])
        for label, res in results.items():
            for p in grid:
                writer.writerow([label, p.name, p.label, *(res[p.key][m] for m in (*OOD_METRICS, "n"))])
    return md, wide, long


def print_tables(results: dict, grid: Sequence[Perturbation]) -> None:
    """The AUROC table on the console, one block of columns per perturbation (rows = detector)."""
    console = Console(width=max(100, Console().width))
    names = list(dict.fromkeys(p.name for p in grid))
    for name in names:
        points = [p for p in grid if p.name == name]
        table = Table(title=f"OOD stress AUROC: {name}")
        table.add_column("detector")
        for p in points:
            table.add_column(p.label, justify="right")
        for label, res in results.items():
            table.add_row(label, *(_fmt(res[p.key]["auc"]) for p in points))
        console.print(table)


def ood_metric_items(result: dict[str, dict[str, float]], grid: Sequence[Perturbation]) -> dict[str, float]:
    """Flat ``ood/<perturbation>/<strength>/<metric>`` values of one detector (NaN dropped)."""
    out = {}
    for p in grid:
        for metric in OOD_METRICS:
            value = float(result[p.key][metric])
            if not math.isnan(value):
                out[f"{metric_prefix(p)}/{metric}"] = value
    return out


def log_run(client: mlflow.MlflowClient, cfg: DictConfig, det: Detector, result: dict, grid: Sequence[Perturbation],
            artifacts: Sequence[Path], seconds: float) -> str:
    """Create the detector's ``task=ood_stress`` run, log its ``ood/...`` metrics and the shared artifacts."""
    experiment_id = tracking_experiment_id(client, task_experiment_name(cfg),  # ood_stress-<data>, not training's
                                           cfg.logger.get("artifact_location"))
    tags = {"task": "ood_stress", "evaluated_run": det.ref, "model": det.loaded.cfg.model.name,
            "detector": det.label, "data": cfg.data.name, "seed": str(cfg.seed)}
    run = client.create_run(experiment_id, run_name=f"ood_stress-{det.label}", tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in ood_metric_items(result, grid).items()]
    metrics.append(Metric("time/ood_seconds", float(seconds), now, 0))
    params = [Param("ckpt", det.ref[:500]), Param("data/name", str(cfg.data.name)), Param("seed", str(cfg.seed)),
              Param("ood/grid", ",".join(p.key for p in grid)[:6000]),
              Param("ood/order", perturbation_order(cfg.ood)),
              Param("data/crop_size", str(det.loaded.cfg.data.crop_size)),
              Param("data/resize_size", str(det.loaded.cfg.data.get("resize_size")))]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])
    client.log_batch(run_id, params=params)
    for path in artifacts:
        client.log_artifact(run_id, str(path), "ood_stress")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


# -- the task ------------------------------------------------------------------------------------------
def ood_stress(cfg: DictConfig) -> dict[str, Any]:
    """Run the OOD grid on every detector; returns results, run ids and written paths."""
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    grid = perturbation_grid(cfg.ood)
    detectors = resolve_detectors(cfg, client, uri)
    log.info("OOD stress: %d detectors x %d grid points on data=%s", len(detectors), len(grid), cfg.data.name)

    start = time.perf_counter()
    results = evaluate_detectors(cfg, detectors, grid)
    seconds = time.perf_counter() - start

    out_dir = Path(cfg.paths.report_dir) / "ood_stress"
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = write_curves(results, grid, cfg.ood, out_dir)
    md, wide, long = write_tables(results, grid, out_dir)
    artifacts = [*curves, md, wide, long]
    run_ids = {d.label: log_run(client, cfg, d, results[d.label], grid, artifacts, seconds) for d in detectors}

    print_tables(results, grid)
    Console().print(f"OOD stress of {len(detectors)} detectors x {len(grid)} settings in {seconds:.1f} s; "
                    f"written to {out_dir}")
    announce_outputs(out_dir, list(run_ids.values()), uri)
    return {"results": results, "run_ids": run_ids, "seconds": seconds, "curves": curves,
            "markdown": md, "csv": wide, "metrics_csv": long,
            "detectors": {d.label: d.ref for d in detectors}}
