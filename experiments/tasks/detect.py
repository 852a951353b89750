"""``detect``: score your own images with a trained detector.

Usage::

    spectral-detect <run id | run folder | weights file> <image or folder> [more images or folders]
        [--out results.csv] [--threshold val | --threshold 0.5] [--raw] [--batch-size 32] [--tile]
        [--device cpu|cuda|auto] [--follow-symlinks] [--tracking-uri URI] [--recursive/--no-recursive]

For every image it prints P(synthetic) and the label (``synthetic`` / ``real``)
at the threshold, then a summary of the files it skipped, counted by reason; the CSV (``--out``) lists every
file with a ``status``: ``scored`` or the reason it was skipped. (``python -m experiments.tasks.detect`` is the
same command.)

The training run records its images' sizes (``data_stats.json``); ``detect`` warns when an input's short side
is more than twice (or less than half) the training median, and when the crop covers less than a quarter of
the input: ``--tile`` then scores a grid of crops and averages them.

Preprocessing is exactly the detector's own evaluation preprocessing, read from
the run's resolved config: ``Preprocess(cfg.data.crop_size, cfg.data.resize_size)``
(plus ``cfg.data.equalizer`` when the run used one). With ``resize_size: null``
the image keeps its native resolution and is centre-cropped to ``crop_size``;
an image whose short side is then smaller than ``crop_size`` cannot be scored
without resampling it, so it is skipped and reported as ``too small``.

P(synthetic) is calibrated by default: the run's post-hoc calibrator, fitted on its
validation split (temperature scaling for CNN detectors, Platt scaling for
scikit-learn pipelines; ``calibration.json`` beside the weights or as the MLflow
run's artifact), is applied, and the header says so; ``--raw`` prints the raw
sigmoid / ``predict_proba`` output instead. A run saved without ``calibration.json``
gives raw P(synthetic), and the header says that too.

The threshold defaults to ``val``: the threshold the run chose on its validation
split (``calibration.json``; for older runs the MLflow metric
``threshold/val_calibrated`` or that key in a ``metrics.json`` beside the weights),
expressed on the scale of the printed P(synthetic) (the calibrators are increasing,
so the decisions are the same on both scales). Without one, 0.5 is used and the
header says so. A number (``--threshold 0.5``) applies to the printed P(synthetic).

Files that cannot be scored (corrupt, empty, not an image, decompression bombs,
too small, broken symlinks, symlinks leading out of the scanned folder unless
``--follow-symlinks``) never stop the command: they are listed at the end.
Exit status: 0 when at least one image was scored, 1 when none was, 2 for a bad
detector reference, input path, threshold or output file.
"""

from __future__ import annotations

from experiments.process import use_huge_pages

if __name__ == "__main__":  # an entry point: before torch is imported
    use_huge_pages()

import argparse
import csv
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from experiments.errors import UserError
from experiments.evaluation.calibration import CALIBRATION_FILE
from experiments.inference.loading import RUN_ID, LoadedDetector, load_detector
from experiments.data.images import UnreadableImage, is_image_file, load_rgb
from experiments.data.transforms import ImageTooSmall, Preprocess
from experiments.data.audit import DATA_STATS_FILE

VAL_THRESHOLD_KEY = "threshold/val_calibrated"
PROGRESS_MIN_IMAGES = 20
CSV_COLUMNS = ("path", "p_synthetic", "label", "threshold", "status")
#: an input whose short side is this many times larger (or smaller) than the training median is out of domain
DOMAIN_SIDE_RATIO = 2.0
#: below this fraction of the (resized) input, the centre crop sees too little of the image
MIN_CROP_FRACTION = 0.25
#: ``--tile``: at most this many crop positions per axis (so at most 16 crops per image)
MAX_TILES_PER_AXIS = 4


class DetectError(UserError):
    """A problem with the command's arguments (reference, input path, threshold, output): exit status 2."""


@dataclass
class Detection:
    """One scored image."""

    path: str
    p_synthetic: float
    label: str
    width: int = 0
    height: int = 0
    crop_fraction: float = 1.0  # the share of the (resized) input the scored crops cover
    tiles: int = 1


@dataclass
class Skipped:
    """One file that was not scored; ``reason`` is a short tag used to count them."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class DetectionResult:
    """Scores of every readable image, the skipped files, and the threshold used."""

    rows: list[Detection]
    skipped: list[Skipped]
    threshold: float
    val_threshold: float | None = None
    val_threshold_source: str = ""
    ignored: int = 0  # files in scanned folders whose extension is not an image extension
    preprocess: str = ""
    source: str = ""
    #: what P(synthetic) is: "calibrated (...)" or "raw (...)"
    probability: str = ""
    notes: list[str] = field(default_factory=list)
    data_stats: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())


# -- finding the images ---------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _scan_folder(folder: Path, recursive: bool, follow_symlinks: bool,
                 files: list[Path], skipped: list[Skipped]) -> int:
    """Append the image files under ``folder`` (sorted, depth first); return how many other files were ignored."""
    root = folder.resolve()
    seen_dirs = {root}
    ignored = 0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as err:
            skipped.append(Skipped(str(current), "unreadable folder", err.strerror or str(err)))
            continue
        subdirs = []
        for entry in entries:
            path = Path(current) / entry.name
            if entry.is_symlink():
                target = Path(os.path.realpath(path))
                if not target.exists():
                    if is_image_file(path):
                        skipped.append(Skipped(str(path), "broken symlink"))
                    continue
                if not follow_symlinks and not _inside(target, root):
                    if target.is_dir() or is_image_file(path):
                        skipped.append(Skipped(str(path), "symlink outside folder", str(target)))
                    continue
                if target.is_dir():
                    # a link to a folder inside the scanned one is reached anyway; follow only outside ones
                    if follow_symlinks and recursive and target not in seen_dirs and not _inside(target, root):
                        seen_dirs.add(target)
                        subdirs.append(path)
                    continue
            elif entry.is_dir(follow_symlinks=False):
                if recursive:
                    seen_dirs.add(Path(entry.path).resolve())
                    subdirs.append(path)
                continue
            if is_image_file(path):
                files.append(path)
            else:
                ignored += 1
        stack.extend(reversed(subdirs))
    return ignored


def collect_images(inputs: Iterable[str | Path], recursive: bool = True,
                   follow_symlinks: bool = False) -> tuple[list[Path], list[Skipped], int]:
    """Image files named by ``inputs`` (files or folders): ``(files, skipped, ignored_count)``.

    A file named explicitly is always tried, whatever its extension. In a folder, only files
    with an image extension are taken; symlinks whose target lies outside that folder are
    skipped unless ``follow_symlinks``. Raises :class:`DetectError` for a path that does not exist.
    """
    files: list[Path] = []
    skipped: list[Skipped] = []
    ignored = 0
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            ignored += _scan_folder(path, recursive, follow_symlinks, files, skipped)
        elif path.exists():
            files.append(path)
        elif path.is_symlink():
            skipped.append(Skipped(str(path), "broken symlink"))
        else:
            raise DetectError(f"input {item} does not exist (expected an image file or a folder of images)")
    unique = list(dict.fromkeys(files))
    return unique, skipped, ignored


# -- the threshold --------------------------------------------------------------------------------


def _metric_from_json(path: Path) -> float | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = data.get(VAL_THRESHOLD_KEY) if isinstance(data, dict) else None
    if value is None and isinstance(data, dict) and isinstance(data.get("threshold"), dict):
        value = data["threshold"].get("val_calibrated")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def val_calibrated_threshold(ref: str | Path, detector: LoadedDetector,
                             tracking_uri: str | None = None) -> tuple[float | None, str]:
    """The run's validation-calibrated threshold and where it was read from, or ``(None, why not)``."""
    ref_str = str(ref)
    if RUN_ID.match(ref_str) and not Path(ref_str).exists():
        import mlflow

        from experiments.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(tracking_uri or "sqlite:///mlruns.db")
        try:
            metrics = mlflow.MlflowClient(tracking_uri=uri).get_run(ref_str).data.metrics
        except Exception as err:  # noqa: BLE001 - any store failure means "not available"
            return None, f"could not read MLflow run {ref_str}: {err}"
        if VAL_THRESHOLD_KEY in metrics:
            return float(metrics[VAL_THRESHOLD_KEY]), f"MLflow run {ref_str}, metric {VAL_THRESHOLD_KEY}"
        return None, f"MLflow run {ref_str} logged no {VAL_THRESHOLD_KEY} metric"
    metrics_file = Path(detector.source).parent / "metrics.json"
    if not metrics_file.is_file():
        return None, f"no metrics.json beside {detector.source}"
    value = _metric_from_json(metrics_file)
    if value is None:
        return None, f"{metrics_file} holds no {VAL_THRESHOLD_KEY} value"
    return value, f"{metrics_file}"


def parse_threshold(text: str | float) -> float | str:
    """``"val"``, ``"auto"`` or a probability in [0, 1]."""
    if isinstance(text, str) and text.strip().lower() in ("val", "auto"):
        return text.strip().lower()
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DetectError(f"--threshold must be a number in [0, 1] or 'val', not {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise DetectError(f"--threshold must be in [0, 1], not {value}")
    return value


def probability_note(detector: LoadedDetector, calibrated: bool) -> str:
    """What the printed P(synthetic) is: calibrated by which calibrator, or raw and why."""
    if detector.calibrator is None:
        return f"raw (no {CALIBRATION_FILE} beside the weights)"
    if not calibrated:
        return "raw (--raw)"
    state = ", ".join(f"{k}={v:.4g}" for k, v in detector.calibrator.state_dict().items() if isinstance(v, float))
    return (f"calibrated ({detector.calibrator.state_dict()['kind']} scaling, {state}, "
            f"fitted on the training run's {(detector.calibration or {}).get('fitted_on', 'val')} split)")


# -- scoring --------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetectError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return device


def build_preprocess(detector: LoadedDetector) -> Preprocess:
    """The detector's evaluation preprocessing, from its training config (no random crop, no augmentation)."""
    data = detector.cfg.data
    equalizer = data.get("equalizer")
    if equalizer is not None:
        from hydra.utils import instantiate

        equalizer = instantiate(equalizer)
    return Preprocess(int(data.crop_size), data.get("resize_size"), random_crop=False, equalizer=equalizer)


def tile_crops(img, preprocess: Preprocess, max_per_axis: int = MAX_TILES_PER_AXIS) -> tuple[torch.Tensor, float]:
    """``(n, 3, crop, crop)`` crops on an even grid over the equalised, resized image, and the share they cover.

    Adjacent crops overlap when the side is not a multiple of the crop; at most ``max_per_axis`` per axis.
    """
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    if preprocess.equalizer is not None:
        img = preprocess.equalizer(img)
    if preprocess.resize_size is not None and min(img.size) != preprocess.resize_size:
        img = TF.resize(img, preprocess.resize_size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    w, h, c = img.size[0], img.size[1], preprocess.crop_size
    if min(w, h) < c:
        raise ImageTooSmall(f"{w}x{h} is smaller than data.crop_size={c}")

    def starts(side: int) -> list[int]:
        n = min(max_per_axis, -(-side // c))
        return sorted({round(i * (side - c) / max(n - 1, 1)) for i in range(n)})

    xs, ys = starts(w), starts(h)
    crops = [TF.pil_to_tensor(img.crop((x, y, x + c, y + c))) for y in ys for x in xs]
    covered = min(1.0, (min(w, (len(xs)) * c) * min(h, len(ys) * c)) / (w * h))
    return torch.stack(crops), covered


def crop_fraction(width: int, height: int, preprocess: Preprocess) -> float:
    """The share of an input of this size that the single centre crop sees (after the resize, if any)."""
    if preprocess.resize_size is not None:
        scale = preprocess.resize_size / max(min(width, height), 1)
        width, height = width * scale, height * scale
    return min(1.0, preprocess.crop_size ** 2 / max(width * height, 1))


def _load_one(path: Path, preprocess: Preprocess, tile: bool = False) -> torch.Tensor | Skipped | tuple:
    """The preprocessed image (one crop, or ``(crops, (w, h), covered)`` when ``tile``), or why it was skipped."""
    try:
        img = load_rgb(path)
        if tile:
            crops, covered = tile_crops(img, preprocess)
            return crops, img.size, covered
        return preprocess(img)
    except UnreadableImage as err:
        return Skipped(str(path), err.reason, err.detail)
    except ImageTooSmall as err:
        return Skipped(str(path), "too small", str(err))
    except Exception as err:  # noqa: BLE001 - bad input must never stop the run
        return Skipped(str(path), "decode error", f"{type(err).__name__}: {err}")


def score_files(detector: LoadedDetector, files: Sequence[Path], preprocess: Preprocess, threshold: float,
                batch_size: int = 32, progress: bool | None = None, tile: bool = False, calibrated: bool = False,
                ) -> tuple[list[Detection], list[Skipped]]:
    """Decode, preprocess and score ``files`` in batches of ``batch_size`` crops; with ``tile``, each image's
    score is the mean P(synthetic) of a grid of crops (:func:`tile_crops`). P(synthetic) is calibrated when
    ``calibrated`` (see :meth:`LoadedDetector.predict_calibrated_proba`)."""
    from tqdm import tqdm

    if progress is None:
        progress = sys.stderr.isatty() and len(files) >= PROGRESS_MIN_IMAGES
    rows: list[Detection] = []
    skipped: list[Skipped] = []
    batch: list[torch.Tensor] = []
    owners: list[int] = []  # the image (index into pending) of each crop in batch
    pending: list[dict] = []  # images whose crops are (partly) batched: path, size, covered, scores

    def flush() -> None:
        if not batch:
            return
        images = torch.stack(batch)
        probs = (detector.predict_calibrated_proba(images) if calibrated
                 else detector.predict_proba(images)).reshape(-1).tolist()
        for owner, p in zip(owners, probs):
            pending[owner]["scores"].append(float(p))
        batch.clear()
        owners.clear()
        for item in pending:
            p = sum(item["scores"]) / len(item["scores"])
            rows.append(Detection(str(item["path"]), p, "synthetic" if p >= threshold else "real",
                                  item["size"][0], item["size"][1], item["covered"], len(item["scores"])))
        pending.clear()

    with tqdm(total=len(files), unit="img", disable=not progress, desc="scoring") as bar:
        for path in files:
            item = _load_one(path, preprocess, tile)
            if isinstance(item, Skipped):
                skipped.append(item)
            else:
                crops, size, covered = item if tile else (item[None], _image_size(path), None)
                if covered is None:
                    covered = crop_fraction(*size, preprocess) if size[0] else 1.0
                if len(batch) + len(crops) > batch_size:
                    flush()
                pending.append({"path": path, "size": size, "covered": covered, "scores": []})
                batch.extend(crops)
                owners.extend([len(pending) - 1] * len(crops))
                if len(batch) >= batch_size:
                    flush()
            bar.update(1)
        flush()
    return rows, skipped


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (0, 0 when unknown)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - the image decoded once already; the size only feeds a warning
        return 0, 0


def detect(ref: str | Path, inputs: str | Path | Iterable[str | Path], threshold: float | str = "auto",
           batch_size: int = 32, device: str = "cpu", recursive: bool = True, follow_symlinks: bool = False,
           tracking_uri: str | None = None, progress: bool | None = None, calibrated: bool = True,
           tile: bool = False) -> DetectionResult:
    """Score every image in ``inputs`` with the detector ``ref`` (run id, run folder or weights file).

    ``threshold`` is a probability, ``"val"`` (the run's validation-calibrated threshold; an error when there is
    none) or ``"auto"`` (that threshold when there is one, else 0.5). ``calibrated``: apply the run's val-fitted
    calibrator to P(synthetic) when it has one. ``tile`` scores a grid of crops per image and averages them.
    ``result.warnings`` says when the inputs are far from the training images' sizes (the run's
    ``data_stats.json``) or when the crop sees little of them.
    Raises :class:`DetectError` for a bad reference, input path or threshold; unreadable
    images never raise, they end up in ``result.skipped``.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if batch_size < 1:
        raise DetectError(f"--batch-size must be >= 1, not {batch_size}")
    wanted = parse_threshold(threshold)
    files, skipped, ignored = collect_images(inputs, recursive=recursive, follow_symlinks=follow_symlinks)
    device = resolve_device(device)
    try:
        detector = load_detector(ref, tracking_uri=tracking_uri, device=device)
    except Exception as err:  # noqa: BLE001 - any failure here means the reference is unusable
        raise DetectError(f"cannot load a detector from {ref}: {err}") from None
    use_calibration = calibrated and detector.calibrator is not None
    probability = probability_note(detector, calibrated)
    if detector.calibration is not None:
        val_threshold = float(detector.calibration["threshold_calibrated" if use_calibration else "threshold"])
        val_source = f"{CALIBRATION_FILE} of {ref}, on {'calibrated' if use_calibration else 'raw'} P(synthetic)"
    else:
        val_threshold, val_source = val_calibrated_threshold(ref, detector, tracking_uri)
    if wanted == "val":
        if val_threshold is None:
            raise DetectError(f"--threshold val: no validation-calibrated threshold is available ({val_source})")
        wanted = val_threshold
    elif wanted == "auto":
        wanted = 0.5 if val_threshold is None else val_threshold
    try:
        preprocess = build_preprocess(detector)
    except Exception as err:  # noqa: BLE001 - a config this command cannot reproduce
        raise DetectError(f"cannot rebuild the preprocessing of {ref} from its config: {err}") from None
    rows, unreadable = score_files(detector, files, preprocess, float(wanted), batch_size, progress, tile,
                                   use_calibration)
    stats = load_data_stats(ref, detector, tracking_uri)
    return DetectionResult(
        rows=rows, skipped=skipped + unreadable, threshold=float(wanted), val_threshold=val_threshold,
        val_threshold_source=val_source, ignored=ignored, source=str(detector.source), probability=probability,
        preprocess=f"crop {preprocess.crop_size}, resize {preprocess.resize_size or 'none (native resolution)'}"
                   + (", mean of a grid of crops (--tile)" if tile else ""),
        data_stats=stats, warnings=domain_warnings(rows, stats, tile),
    )


# -- the detector's domain ------------------------------------------------------------------------


def load_data_stats(ref: str | Path, detector: LoadedDetector, tracking_uri: str | None = None) -> dict | None:
    """The run's ``data_stats.json`` (train image sizes), beside the weights or as an MLflow artifact; None if absent."""
    beside = Path(detector.source).parent / DATA_STATS_FILE
    if beside.is_file():
        path = beside
    elif RUN_ID.match(str(ref)) and not Path(str(ref)).exists():
        import mlflow

        from experiments.tracking import download_run_artifact, resolve_tracking_uri

        try:
            client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri or "sqlite:///mlruns.db"))
            path = download_run_artifact(client, str(ref), DATA_STATS_FILE)
        except Exception:  # noqa: BLE001 - older runs have none
            return None
    else:
        return None
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and stats.get("n_images") else None


def domain_warnings(rows: Sequence[Detection], stats: dict | None, tile: bool = False) -> list[str]:
    """Warnings for inputs whose short side is more than :data:`DOMAIN_SIDE_RATIO` times off the training
    median, and for crops that cover less than :data:`MIN_CROP_FRACTION` of the input."""
    out: list[str] = []
    sized = [r for r in rows if r.width and r.height]
    if stats and sized:
        train_side = min(float(stats["width_median"]), float(stats["height_median"]))
        far = [r for r in sized if max(min(r.width, r.height) / train_side,
                                       train_side / min(r.width, r.height)) > DOMAIN_SIDE_RATIO]
        if far:
            example = far[0]
            out.append(
                f"{len(far)} of {len(sized)} image(s) are far from the training images' sizes (train median "
                f"{stats['width_median']:.0f}x{stats['height_median']:.0f} px, e.g. {example.width}x{example.height} "
                f"px: {example.path}); scores outside the training domain are unreliable")
    small = [r for r in sized if r.crop_fraction < MIN_CROP_FRACTION]
    if small:
        advice = "" if tile else "; pass --tile to score a grid of crops and average them"
        out.append(f"the scored crop covers less than {MIN_CROP_FRACTION:.0%} of {len(small)} image(s) "
                   f"(e.g. {small[0].crop_fraction:.0%} of {small[0].path}){advice}")
    return out


# -- reporting ------------------------------------------------------------------------------------


def write_csv(result: DetectionResult, out: str | Path) -> Path:
    """Write ``path, p_synthetic, label, threshold, status`` for every file: ``status`` is ``scored``, or the
    reason it was skipped (then ``p_synthetic`` and ``label`` are empty)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in result.rows:
            writer.writerow([row.path, f"{row.p_synthetic:.6f}", row.label, f"{result.threshold:.6g}", "scored"])
        for skip in result.skipped:
            writer.writerow([skip.path, "", "", f"{result.threshold:.6g}", skip.reason])
    return out


def format_header(result: DetectionResult) -> str:
    lines = [f"detector: {result.source}", f"preprocessing: {result.preprocess}"]
    if result.probability:
        lines.append(f"P(synthetic): {result.probability}")
    if result.val_threshold is None:
        val = f"val-calibrated threshold: not available ({result.val_threshold_source})"
    else:
        val = f"val-calibrated threshold: {result.val_threshold:.4f} (from {result.val_threshold_source})"
        if result.threshold != result.val_threshold:
            val += "; pass --threshold val to use it"
    lines.append(val)
    lines.append(f"threshold: {result.threshold:.4g} (label 'synthetic' when P(synthetic) >= threshold)")
    if result.data_stats:
        st = result.data_stats
        lines.append(f"trained on: {st['n_images']} images, median {st['width_median']:.0f}x{st['height_median']:.0f}"
                     f" px (min {st['width_min']}x{st['height_min']}, max {st['width_max']}x{st['height_max']})")
    return "\n".join(lines)


def format_rows(result: DetectionResult) -> str:
    lines = [f"{'p_synthetic':>11}  {'label':<9}  path"]
    lines += [f"{r.p_synthetic:>11.4f}  {r.label:<9}  {r.path}" for r in result.rows]
    return "\n".join(lines)


def format_summary(result: DetectionResult) -> str:
    n_syn = sum(r.label == "synthetic" for r in result.rows)
    lines = [f"scored {len(result.rows)} image(s): {n_syn} synthetic, {len(result.rows) - n_syn} real; "
             f"skipped {len(result.skipped)}"]
    if result.skipped:
        counts = ", ".join(f"{reason}: {n}" for reason, n in result.skipped_by_reason().items())
        lines.append(f"skipped by reason: {counts}")
        for s in result.skipped:
            lines.append(f"  skipped {s.path}: {s.reason}" + (f" ({s.detail})" if s.detail else ""))
    if result.ignored:
        lines.append(f"ignored {result.ignored} file(s) without an image extension in the scanned folders")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------


def detector_line(ref: str, tracking_uri: str | None) -> str:
    """The detector reference, with the MLflow UI link when it is a run id."""
    if not RUN_ID.match(str(ref)) or Path(str(ref)).exists():
        return str(Path(ref).resolve())
    from experiments.tracking import resolve_tracking_uri, run_link

    return f"MLflow run {ref} ({run_link(str(ref), resolve_tracking_uri(tracking_uri or 'sqlite:///mlruns.db'))})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectral-detect",
        description="Score images with a trained detector: P(synthetic) and a real/synthetic label for each file.",
        epilog="Exit status: 0 when at least one image was scored, 1 when none was, 2 for bad arguments.",
    )
    parser.add_argument("ref", help="MLflow run id, run folder (config.yaml + weights) or weights file")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--out", help="write a CSV with columns path, p_synthetic, label, threshold, status "
                                      "(every file: 'scored' or the reason it was skipped)")
    parser.add_argument("--tile", action="store_true",
                        help="score a grid of crops of each image (up to 4x4) and average them, for inputs much "
                             "larger than the training crop")
    parser.add_argument("--threshold", default="auto",
                        help="decision threshold on the printed P(synthetic), or 'val' for the run's "
                             "validation-calibrated threshold (default auto: 'val' when the run has one, else 0.5)")
    parser.add_argument("--raw", action="store_true",
                        help="print the raw P(synthetic), without the run's val-fitted calibrator")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="default cpu")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="also score symlinks that point outside the scanned folder")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store holding the run when ref is a run id (default sqlite:///mlruns.db)")
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                        help="descend into sub-folders (default: yes)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = detect(args.ref, args.inputs, threshold=args.threshold, batch_size=args.batch_size,
                        device=args.device, recursive=args.recursive, follow_symlinks=args.follow_symlinks,
                        tracking_uri=args.tracking_uri, calibrated=not args.raw, tile=args.tile)
    except DetectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_header(result))
    if result.rows:
        print(format_rows(result))
    if args.out:
        try:
            path = write_csv(result, args.out)
        except OSError as err:
            print(f"error: cannot write {args.out}: {err}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    print(format_summary(result))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"outputs: {Path(args.out).resolve() if args.out else 'printed only (pass --out results.csv)'}")
    print(f"detector: {detector_line(args.ref, args.tracking_uri)}")
    if not result.rows:
        print("no image could be scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
