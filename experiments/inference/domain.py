"""The detector's domain: the training run's image sizes (``data_stats.json``) and the warnings for inputs far
from them, or inputs of which the scored crop sees little."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from experiments.data.audit import DATA_STATS_FILE
from experiments.inference.detection import Detection
from experiments.inference.loading import LoadedDetector
from experiments.tracking import RUN_ID, download_run_artifact, mlflow_client

#: an input whose short side is this many times larger (or smaller) than the training median is out of domain
DOMAIN_SIDE_RATIO = 2.0
#: below this fraction of the (resized) input, the centre crop sees too little of the image
MIN_CROP_FRACTION = 0.25


def load_data_stats(ref: str | Path, detector: LoadedDetector, tracking_uri: str | None = None) -> dict | None:
    """The run's ``data_stats.json`` (train image sizes), beside the weights or as an MLflow artifact; None if absent."""
    beside = Path(detector.source).parent / DATA_STATS_FILE
    if beside.is_file():
        path = beside
    elif RUN_ID.match(str(ref)) and not Path(str(ref)).exists():
        try:
            path = download_run_artifact(mlflow_client(tracking_uri), str(ref), DATA_STATS_FILE)
        except Exception:  # noqa: BLE001 - a run without the artifact, or an unreachable store
            return None
    else:
        return None
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and stats.get("n_images") else None


def domain_warnings(rows: Sequence[Detection], stats: dict | None) -> list[str]:
    """Warnings for inputs whose short side is more than :data:`DOMAIN_SIDE_RATIO` times off the training
    median, and for views that cover less than :data:`MIN_CROP_FRACTION` of the input (with the ``--views`` that
    sees more)."""
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
        if any(r.tiles == 1 for r in small):
            advice = "; pass --views grid:4 (or --tile) to score a grid of crops and pool them"
        else:
            advice = "; pass --views all to score every crop position"
        out.append(f"the scored crop covers less than {MIN_CROP_FRACTION:.0%} of {len(small)} image(s) "
                   f"(e.g. {small[0].crop_fraction:.0%} of {small[0].path}){advice}")
    return out
