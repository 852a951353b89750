"""Helpers for the scikit-learn detectors: batched feature collection and safe persistence (skops)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from features.precision import as_unit_float


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
    untrusted = sio.get_untrusted_types(file=path)
    allowed = [t for t in untrusted if t.startswith(("detectors.", "sklearn.", "numpy."))]
    rejected = sorted(set(untrusted) - set(allowed))
    if rejected:
        raise ValueError(f"{path} contains types outside the suite and scikit-learn: {rejected}")
    return sio.load(path, trusted=allowed)
