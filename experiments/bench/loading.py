"""``make bench``'s data section: one pass over the demo train split from the files, from the decoded pack
of ``data.cache=true`` and from an encoded pack, ordered and shuffled, and the time to build each pack, beside
the decode cache the decoded pack replaced (:mod:`experiments.bench.reference_cache`), at 64 and 224 px.

Each contender and its reference are timed in alternation (:func:`~experiments.bench.timing.best_times_interleaved`),
so a slow spell of a shared machine falls on both; the speed-up column of a pack row is its rate over the
previous cache's for the same operation and size.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from experiments.bench.reference_cache import ArrayDataset, build_array
from experiments.bench.timing import Row, best_time, best_times_interleaved, peak_rss_mb

#: the demo of the 224 px rows: 100 images per class and generator (408 training images)
DEMO_224 = dict(size=224, per_class=100)
BATCH = 32


def demo_datamodule(root: Path, **kw):
    from experiments.data.datamodule import DetectorDataModule

    args = dict(name="demo", root=str(root), crop_size=64, resize_size=None, batch_size=BATCH, num_workers=0,
                persistent_workers=False, pin_memory=False, val_fraction=0.15)
    args.update(kw)
    return DetectorDataModule(**args)


def _one_pass(loader) -> int:
    n = 0
    for batch in loader:
        n += 0 if batch.get("empty") else int(batch["image"].shape[0])
    return n


def _epochs(loader):
    """A pass of ``loader`` per call, each a new epoch of its sampler (as Lightning's ``set_epoch``)."""
    epoch = iter(range(1 << 30))

    def one() -> int:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(next(epoch))
        return _one_pass(loader)
    return one


def _ensure_demo(root: Path, size: int) -> None:
    """Build the demo at ``root`` unless its manifest lists every file (a partly written tree is rebuilt)."""
    from experiments.data.demo import build_demo_dataset

    build_demo_dataset(root, progress=False, **(DEMO_224 if size == 224 else {}))


def bench_data(roots: dict[int, Path], repeats: int, num_workers: int = 0, build_repeats: int = 5) -> list[Row]:
    """The data rows at each ``size: demo root`` of ``roots`` (a missing demo is built first; the encoded pack
    at the smallest size only)."""
    from experiments.data.cache import cached_pack, file_list_key

    rows = []
    for size, root in sorted(roots.items()):
        _ensure_demo(root, size)
        files = demo_datamodule(root, crop_size=size, num_workers=num_workers)
        files.setup()
        train, n_all = files.splits["train"], sum(len(v) for v in files.splits.values())
        note = f"demo train split ({len(train)} images), {num_workers} workers, batch {BATCH}"
        loader = files._loader("train", shuffle=False)
        n = _one_pass(loader)
        t_files = best_time(lambda: _one_pass(loader), repeats, warmup=0)
        with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
            tmp = Path(tmp)
            rounds = iter(range(1 << 30))

            def build_old() -> None:  # as the previous cache did: its key, then the array
                out = tmp / "old" / str(next(rounds))
                for split, samples in files.splits.items():
                    build_array(samples, files.preprocess, out / file_list_key(repr(files.preprocess), samples))

            def build_new() -> None:
                out = tmp / "new" / str(next(rounds))
                for split, samples in files.splits.items():  # as prepare_data does: one pack per split
                    cached_pack(split, samples, files.preprocess, out, root=root,
                                class_names=files.layout.class_names)

            def fresh(sub: str) -> None:  # each build writes afresh, after removing its own previous output
                shutil.rmtree(tmp / sub, ignore_errors=True)

            t_old_build, t_new_build = best_times_interleaved(
                [lambda: (fresh("old"), build_old()), lambda: (fresh("new"), build_new())], build_repeats,
                min_total=0)
            fresh("old")
            build_old()
            old_folder = next((tmp / "old").iterdir()) / file_list_key(repr(files.preprocess), train)
            old = ArrayDataset(train, old_folder, files.generator_names)
            cached = demo_datamodule(root, crop_size=size, num_workers=num_workers, cache=True,
                                     cache_dir=str(tmp / "cache"))
            cached.prepare_data()
            cached.setup()

            def old_loader(shuffle: bool) -> DataLoader:  # the previous datamodule's loader of the array
                from experiments.data.dataset import collate_skipping

                return DataLoader(old, batch_size=BATCH, shuffle=shuffle, num_workers=num_workers,
                                  collate_fn=collate_skipping)

            fns = [_epochs(old_loader(False)), _epochs(cached._loader("train", shuffle=False)),
                   _epochs(old_loader(True)), _epochs(cached._loader("train", shuffle=True))]
            t_old, t_new, t_old_shuf, t_new_shuf = best_times_interleaved(fns, repeats, min_total=1.0)
            build = f"{n_all} images, all splits"
            rows += [
                Row("data", "DataLoader", "decode files", n / t_files, size, BATCH, speedup=t_old / t_files,
                    peak_rss_mb=peak_rss_mb(), note=note),
                Row("data", "DataLoader", "previous cache: .npy memmap, ordered", n / t_old, size, BATCH,
                    speedup=1.0, peak_rss_mb=peak_rss_mb(), note=note + " (reference of the pack rows)"),
                Row("data", "DataLoader", "decoded pack (data.cache=true), ordered", n / t_new, size, BATCH,
                    speedup=t_old / t_new, peak_rss_mb=peak_rss_mb(), note=note + ", against the .npy memmap"),
                Row("data", "DataLoader", "previous cache: .npy memmap, shuffled", n / t_old_shuf, size, BATCH,
                    speedup=1.0, peak_rss_mb=peak_rss_mb(), note=note + " (reference of the pack rows)"),
                Row("data", "DataLoader", "decoded pack, shuffled (seeded DistributedSampler)", n / t_new_shuf,
                    size, BATCH, speedup=t_old_shuf / t_new_shuf, peak_rss_mb=peak_rss_mb(),
                    note=note + ", against the .npy memmap"),
                Row("data", "pack build", "previous cache: decode + write .npy (1 process)", n_all / t_old_build,
                    size, BATCH, speedup=1.0, peak_rss_mb=peak_rss_mb(), note=f"{build}, {t_old_build:.2f} s"),
                Row("data", "pack build", "decoded pack: decode + write once", n_all / t_new_build, size, BATCH,
                    speedup=t_old_build / t_new_build, peak_rss_mb=peak_rss_mb(),
                    note=f"{build}, {t_new_build:.2f} s, against the .npy build"),
            ]
            if size == min(roots):
                rows += _encoded_rows(files, root, tmp, repeats, num_workers, n, t_old, note)
    return rows


def _encoded_rows(files, root: Path, tmp: Path, repeats: int, num_workers: int, n: int, t_old: float,
                  note: str) -> list[Row]:
    from experiments.data.packed import PackedDataModule
    from experiments.data.shards import write_pack

    n_all = sum(len(v) for v in files.splits.values())
    start = time.perf_counter()
    write_pack(files.splits, tmp / "encoded", root, files.layout.class_names)
    build = time.perf_counter() - start
    packed = PackedDataModule(name="packed", root=str(tmp / "encoded"), crop_size=files.preprocess.crop_size,
                              resize_size=None, batch_size=BATCH, num_workers=num_workers, persistent_workers=False,
                              pin_memory=False)
    packed.setup()
    loader = packed._loader("train", shuffle=False)
    t_packed = best_time(lambda: _one_pass(loader), repeats)
    return [Row("data", "DataLoader", "encoded pack (LitData, data=packed)", n / t_packed,
                files.preprocess.crop_size, BATCH, speedup=t_old / t_packed, peak_rss_mb=peak_rss_mb(), note=note),
            Row("data", "pack build", "hash + write once (encoded, task=pack)", n_all / build,
                files.preprocess.crop_size, BATCH, peak_rss_mb=peak_rss_mb(), note=f"{n_all} images, all splits, "
                f"{build:.1f} s")]
