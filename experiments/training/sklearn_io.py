"""Helpers for the scikit-learn detectors: batched feature collection and safe persistence (skops)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from features.precision import as_unit_float

log = logging.getLogger(__name__)


def collect_features(loader: DataLoader, features) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the (stateless) feature step of a pipeline over a loader, batch by batch.

    Returns ``(features, labels, generator ids, dataset indices)``. Images never pile up in memory:
    only their feature vectors do.
    """
    xs, ys, gs, idx = [], [], [], []
    for batch in loader:
        if batch.get("empty"):
            continue
        xs.append(np.asarray(features.transform(as_unit_float(batch["image"]))))
        ys.append(batch["label"].numpy().astype(np.int64))
        gs.append(batch["generator"].numpy().astype(np.int64))
        idx.append(batch["index"].numpy().astype(np.int64))
    if not xs:
        raise ValueError("no readable images in this split")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), np.concatenate(idx)


def cached_features(loader: DataLoader, features, root: Path, header: str, preprocess=None):
    """:func:`collect_features`, stored once per file list under ``root`` and read back afterwards.

    The key hashes ``header`` (what the features depend on: the feature step and the preprocessing) and
    every sample's path, size and modification time (``experiments.data.cache.file_list_key``), so a new,
    removed or rewritten file, or another encoder or preprocessing, gives a fresh file. A split with random
    preprocessing (``preprocess`` not deterministic) is never cached.
    """
    from experiments.data.cache import file_list_key, is_cacheable

    samples = getattr(loader.dataset, "samples", None)
    if samples is None or (preprocess is not None and not is_cacheable(preprocess)):
        return collect_features(loader, features)
    path = Path(root) / f"{file_list_key(header, samples)}.npz"
    if path.is_file():
        with np.load(path) as stored:
            log.info("frozen features read from %s", path)
            return stored["x"], stored["y"], stored["g"], stored["index"]
    result = collect_features(loader, features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x=result[0], y=result[1], g=result[2], index=result[3])
    os.replace(tmp, path)  # atomic: concurrent sweep jobs never read a half-written file
    return result


def count_estimator_parameters(estimator) -> int:
    """Learned numbers of a fitted classifier: coefficients for linear models, tree nodes for forests."""
    if hasattr(estimator, "estimators_"):
        return int(sum(tree.tree_.node_count for tree in estimator.estimators_))
    return int(sum(np.size(getattr(estimator, a, 0)) for a in ("coef_", "intercept_")))


def save_estimator(estimator, path: Path) -> Path:
    """Persist with skops (no arbitrary code on load, unlike pickle)."""
    import skops.io as sio

    sio.dump(estimator, path)
    return path


def load_estimator(path: str | Path):
    import skops.io as sio

    path = Path(path)
    return sio.load(path, trusted=trusted_types(sio.get_untrusted_types(file=path), str(path)))


#: the modules whose types a saved pipeline may hold: the suite's detectors, scikit-learn and NumPy
TRUSTED_MODULES = ("detectors.", "sklearn.", "numpy.")


def trusted_types(untrusted: list[str], source: str) -> list[str]:
    """The types skops reports as untrusted in ``source``, all of them from :data:`TRUSTED_MODULES`; raises
    ``ValueError`` naming ``source`` and the others."""
    allowed = [t for t in untrusted if t.startswith(TRUSTED_MODULES)]
    rejected = sorted(set(untrusted) - set(allowed))
    if rejected:
        raise ValueError(f"{source} contains types outside the suite and scikit-learn: {rejected}")
    return allowed
