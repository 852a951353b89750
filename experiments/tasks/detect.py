"""``detect``: score your own images with a trained detector.

Usage::

    spectral-detect <run id | run folder | weights file | models:/<name>/<version> | runs:/<run id>/model>
        <image or folder> [more images or folders]
        [--out results.csv] [--threshold op | --threshold val | --threshold 0.5] [--raw] [--batch-size 32]
        [--views auto|center|grid:K|all] [--pooling mean|max] [--tile]
        [--device cpu|cuda|auto] [--follow-symlinks] [--tracking-uri URI] [--recursive/--no-recursive]

For every image it prints P(synthetic) and the label (``synthetic`` / ``real`` / ``unsure``)
at the threshold, then a summary of the files it skipped, counted by reason; the CSV (``--out``) lists every
file with a ``status``: ``scored`` or the reason it was skipped. (``python -m experiments.tasks.detect`` is the
same command.)

The training run records its images' sizes (``data_stats.json``); ``detect`` warns when an input's short side
is more than twice (or less than half) the training median, and when the crop covers less than a quarter of
the input: ``--views grid:4`` (or ``--tile``, the same) then scores a grid of crops and pools them.

``--views`` (default ``auto``) and ``--pooling`` (default ``mean``) are ``eval.views`` and ``eval.pooling`` of
``task=evaluate`` (:mod:`experiments.inference.tiling`): ``center`` scores one crop, ``grid:K`` a ``K x K`` grid of
crops at the training crop size cut from the image at its native size, ``all`` every crop position; ``auto``
tiles (``grid:4``) an image more than twice the crop for a spectral detector (``model.native_views``). The
header says which views and pooling were used.

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

The threshold defaults to ``op``: the run's operating point, chosen on the real images of its validation split
alone (``eval.operating_point=fpr@0.05``: about 5 % of such real photos are flagged), stored in
``calibration.json`` and expressed on the scale of the printed P(synthetic) (the calibrators are increasing, so
the decisions are the same on both scales). A run without one falls back to ``val``, the threshold the run chose
on its validation split with both classes, and a run without ``calibration.json`` to 0.5; the header says which.
A number (``--threshold 0.5``) applies to the printed P(synthetic). When the run stored an abstention band
(``eval.abstain``), images inside it are labelled ``unsure``.

Files that cannot be scored (corrupt, empty, not an image, decompression bombs,
too small, broken symlinks, symlinks leading out of the scanned folder unless
``--follow-symlinks``) never stop the command: they are listed at the end.
Exit status: 0 when at least one image was scored, 1 when none was, 2 for a bad
detector reference, input path, threshold or output file.

The engine is :mod:`experiments.inference`: ``files`` (finding the images), ``tiling`` (the preprocessing and
``--tile``), ``file_scoring`` (batches of crops), ``domain`` (``data_stats.json`` and its warnings).
"""

from __future__ import annotations

from experiments.process import use_huge_pages, use_plain_logs

if __name__ == "__main__":  # an entry point: before torch is imported
    use_huge_pages()
    use_plain_logs()

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from experiments.evaluation.calibration import CALIBRATION_FILE
from experiments.inference.detection import DetectError, Detection, DetectionResult, Skipped
from experiments.inference.device import DeviceUnavailable, resolve_device
from experiments.inference.domain import domain_warnings, load_data_stats
from experiments.inference.file_scoring import score_files
from experiments.inference.files import collect_images
from experiments.inference.loading import LoadedDetector, load_detector, resolve_reference
from experiments.inference.model_uris import is_model_uri
from experiments.inference.tiling import TILE_GRID, ViewsError, parse_pooling, parse_views
from experiments.tracking import RUN_ID

__all__ = ["CSV_COLUMNS", "DetectError", "Detection", "DetectionResult", "Skipped", "detect", "main"]

CSV_COLUMNS = ("path", "p_synthetic", "label", "threshold", "status")

#: the label of an image inside the run's abstention band (``eval.abstain``)
UNSURE = "unsure"


# -- the threshold --------------------------------------------------------------------------------


def parse_threshold(text: str | float) -> float | str:
    """``"op"``, ``"val"``, ``"auto"`` or a probability in [0, 1]."""
    if isinstance(text, str) and text.strip().lower() in ("op", "val", "auto"):
        return text.strip().lower()
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DetectError(f"--threshold must be a number in [0, 1], 'op' or 'val', not {text!r}") from None
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


def detect(ref: str | Path, inputs: str | Path | Iterable[str | Path], threshold: float | str = "auto",
           batch_size: int = 32, device: str = "cpu", recursive: bool = True, follow_symlinks: bool = False,
           tracking_uri: str | None = None, progress: bool | None = None, calibrated: bool = True,
           tile: bool = False, views: str = "auto", pooling: str = "mean") -> DetectionResult:
    """Score every image in ``inputs`` with the detector ``ref`` (run id, run folder, weights file, or an MLflow
    model URI: ``models:/<name>/<version>``, ``models:/<name>@<alias>``, ``runs:/<run id>/model``).

    ``threshold`` is a probability, ``"val"`` (the run's validation-calibrated threshold; an error when there is
    none) or ``"auto"`` (that threshold when there is one, else 0.5). ``calibrated``: apply the run's val-fitted
    calibrator to P(synthetic) when it has one. ``views`` (``auto``, ``center``, ``grid:K``, ``all``) are the views
    scored per image and ``pooling`` (``mean``, ``max``) how their scores are pooled; ``tile`` is ``views="grid:4"``.
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
    try:
        chosen = parse_views(f"grid:{TILE_GRID}" if tile else views, "--views")
        pooling = parse_pooling(pooling, "--pooling")
    except ViewsError as err:
        raise DetectError(str(err)) from None
    files, skipped, ignored = collect_images(inputs, recursive=recursive, follow_symlinks=follow_symlinks)
    try:
        device = resolve_device(device)
    except DeviceUnavailable:
        raise DetectError(f"--device {device} was asked for but CUDA is not available; use --device cpu or auto"
                          ) from None
    try:
        run_ref = resolve_reference(ref, tracking_uri)  # a model URI -> its training run, asked once
        detector = load_detector(run_ref, tracking_uri=tracking_uri, device=device)
    except Exception as err:  # noqa: BLE001 - any failure here means the reference is unusable
        raise DetectError(f"cannot load a detector from {ref}: {err}") from None
    use_calibration = calibrated and detector.calibrator is not None
    probability = probability_note(detector, calibrated)
    if detector.calibration is not None:
        val_threshold = float(detector.calibration["threshold_calibrated" if use_calibration else "threshold"])
        val_source = f"{CALIBRATION_FILE} of {ref}, on {'calibrated' if use_calibration else 'raw'} P(synthetic)"
    else:
        val_threshold, val_source = None, f"{ref} has no {CALIBRATION_FILE}"
    op_threshold, op_note = operating_threshold(detector, use_calibration)
    if wanted == "val":
        if val_threshold is None:
            raise DetectError(f"--threshold val: no validation-calibrated threshold is available ({val_source})")
        wanted = val_threshold
    elif wanted == "op":
        if op_threshold is None:
            raise DetectError(f"--threshold op: {ref} stored no operating point (re-train it to store one)")
        wanted = op_threshold
    elif wanted == "auto":
        wanted = op_threshold if op_threshold is not None else 0.5 if val_threshold is None else val_threshold
    band = printed_band(detector, use_calibration)
    try:
        preprocess = detector.preprocess
    except Exception as err:  # noqa: BLE001 - a config this command cannot reproduce
        raise DetectError(f"cannot rebuild the preprocessing of {ref} from its config: {err}") from None
    chosen = chosen.for_detector(detector.native_views)
    rows, unreadable = score_files(detector, files, preprocess, float(wanted), batch_size, progress, chosen,
                                   use_calibration, pooling)
    mark_unsure(rows, band)
    stats = load_data_stats(run_ref, detector, tracking_uri)
    return DetectionResult(
        rows=rows, skipped=skipped + unreadable, threshold=float(wanted), val_threshold=val_threshold,
        val_threshold_source=val_source, op_threshold=op_threshold, op_note=op_note, band=band,
        band_note="" if detector.abstention is None else detector.abstention.spec, ignored=ignored,
        source=str(detector.source), probability=probability,
        preprocess=f"crop {preprocess.crop_size}, resize {preprocess.resize_size or 'none (native resolution)'}"
                   + f"; views {chosen.describe(preprocess.crop_size)}, pooling {pooling}",
        data_stats=stats, warnings=domain_warnings(rows, stats),
    )

def operating_threshold(detector: LoadedDetector, calibrated: bool) -> tuple[float | None, str]:
    """The run's operating point threshold on the printed scale (calibrated P when ``calibrated``), and what it
    is; ``(None, "")`` for a run without one."""
    record = detector.operating_point
    if record is None:
        return None, ""
    raw = float(record["threshold"])
    value = float(detector.calibrate([raw])[0]) if calibrated else raw
    return value, (f"{record.get('spec', '?')} chosen on {record.get('n_real', '?')} real images of the training "
                   f"run's {record.get('fitted_on', 'val')} split (raw P(synthetic) {raw:.4f})")


def printed_band(detector: LoadedDetector, calibrated: bool) -> tuple[float, float] | None:
    """The run's abstention band on the printed scale (both calibrators are increasing maps); None without one."""
    band = detector.abstention
    if band is None:
        return None
    if not calibrated:
        return band.low, band.high
    low, high = detector.calibrate([band.low, band.high])
    return float(low), float(high)


def mark_unsure(rows: list[Detection], band: tuple[float, float] | None) -> None:
    """Label ``unsure`` every row whose P(synthetic) lies in ``band`` (inclusive)."""
    if band is None:
        return
    for row in rows:
        if band[0] <= row.p_synthetic <= band[1]:
            row.label = UNSURE


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
    if result.op_threshold is None:
        lines.append("operating point: not available (the run stored none)")
    else:
        used = "; the verdict uses it" if result.threshold == result.op_threshold else "; pass --threshold op to use it"
        lines.append(f"operating point: {result.op_threshold:.4f} ({result.op_note}){used}")
    lines.append(f"threshold: {result.threshold:.4g} (label 'synthetic' when P(synthetic) >= threshold)")
    if result.band is not None:
        lines.append(f"abstention band: [{result.band[0]:.4f}, {result.band[1]:.4f}] of the printed P(synthetic) "
                     f"(eval.abstain={result.band_note}): label '{UNSURE}' inside")
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
    n_unsure = sum(r.label == UNSURE for r in result.rows)
    unsure = f", {n_unsure} {UNSURE}" if result.band is not None else ""
    lines = [f"scored {len(result.rows)} image(s): {n_syn} synthetic, {len(result.rows) - n_syn - n_unsure} real"
             f"{unsure}; skipped {len(result.skipped)}"]
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
    if is_model_uri(ref):
        return f"MLflow model {ref}"
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
    parser.add_argument("ref", help="MLflow run id, run folder (config.yaml + weights), weights file, or MLflow "
                                    "model URI (models:/<name>/<version>, models:/<name>@<alias>, "
                                    "runs:/<run id>/model)")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--out", help="write a CSV with columns path, p_synthetic, label, threshold, status "
                                      "(every file: 'scored' or the reason it was skipped)")
    parser.add_argument("--views", default="auto",
                        help="views scored per image: auto (default: a 4x4 grid at native size for a spectral "
                             "detector on images over twice the crop, else center), center, grid:K or all")
    parser.add_argument("--pooling", default="mean", choices=("mean", "max"),
                        help="how an image's view scores are pooled (default mean)")
    parser.add_argument("--tile", action="store_true", help="the same as --views grid:4")
    parser.add_argument("--threshold", default="auto",
                        help="decision threshold on the printed P(synthetic), 'op' for the run's operating point "
                             "(chosen on its val reals, eval.operating_point) or 'val' for its "
                             "validation-calibrated threshold (default auto: 'op', else 'val', else 0.5)")
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
                        tracking_uri=args.tracking_uri, calibrated=not args.raw, tile=args.tile,
                        views=args.views, pooling=args.pooling)
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
