"""placeholder"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

GENERATORS = ("gen_a", "gen_b")
FOLDERS = tuple((gen, split, cls) for gen in GENERATORS for split in ("train", "val") for cls in ("nature", "ai"))


def _write_chunk(args: tuple[str, int, int, int, int]) -> int:
    from PIL import Image

    folder, start, stop, size, seed = args
    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:07d}.png"), compress_level=1)
    return stop - start


def generated_tree(n_images: int, cache_root: Path, size: int = 32, workers: int | None = None) -> Path:
    root = cache_root / f"genimage_{n_images}_{size}px"
    done = root / ".complete"
    if done.exists():
        return root
    per_folder = -(-n_images // len(FOLDERS))
    jobs = []
    for k, (gen, split, cls) in enumerate(FOLDERS):
        folder = root / gen / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        jobs += [(str(folder), a, min(a + 2000, per_folder), size, k) for a in range(0, per_folder, 2000)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(_write_chunk, jobs))
    done.write_text(str(n_images))
    return root
