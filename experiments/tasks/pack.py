"""``task=pack``: write ``cfg.data`` once as LitData shards (:mod:`experiments.data.shards`).

    python run.py task=pack data=genimage_tiny data.root=/path/to/genimage_tiny pack.out=/path/to/pack [pack.decoded=true]

Then train from the pack with ``data=packed data.root=/path/to/pack``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.data.integrity import MANIFEST_NAME
from experiments.data.layouts import DatasetLayoutError
from experiments.data.shards import PackInfo, is_remote, join, write_pack
from experiments.training.builders import build_datamodule

#: how many unusable files the summary lists.
SHOWN = 10


def pack(cfg: DictConfig) -> PackInfo:
    """Pack the splits of ``cfg.data`` into ``cfg.pack.out``; print the counts and the unusable files."""
    if OmegaConf.is_missing(cfg.pack, "out") or not cfg.pack.out:
        raise DatasetLayoutError("pack.out is not set: pass the pack's folder or URL, e.g. `python run.py "
                                 f"task=pack data={cfg.data.name} data.root=... pack.out=/path/to/pack`")
    out = str(cfg.pack.out)
    if not is_remote(out) and Path(out).exists() and any(Path(out).iterdir()):
        raise DatasetLayoutError(f"pack.out={out} exists and is not empty; remove it or choose another folder "
                                 "(a pack is written once, never into an older one)")
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    splits = datamodule.check_layout()
    decoded = bool(cfg.pack.get("decoded", False))
    info = write_pack(splits, out, datamodule.root, datamodule.layout.class_names,
                      preprocess=datamodule.preprocess if decoded else None, workers=cfg.pack.get("workers"))
    print(f"Packed {sum(info.counts.values())} images ({info.mode}) into {cfg.pack.out}: "
          + ", ".join(f"{s} {n}" for s, n in info.counts.items()))
    if info.n_bad:
        print(f"{info.n_bad} unusable file(s), stored as invalid records and counted as skipped when read:")
        bad = [(s, b) for s, items in info.bad.items() for b in items]
        for split, b in bad[:SHOWN]:
            print(f"  {split}: {b.relpath} ({b.reason})")
        if len(bad) > SHOWN:
            print(f"  ... (+{len(bad) - SHOWN} more, listed in {join(cfg.pack.out, 'pack.json')})")
    print(f"Manifest: {join(cfg.pack.out, MANIFEST_NAME)}\nTrain from it with: python run.py data=packed "
          f"data.root={cfg.pack.out}")
    return info
