"""``make bench-scale``: the start-up of a run at dataset scale; writes ``reports/bench_scale.{md,csv}``.

For generated GenImage-layout trees of small PNG images (default 10k, 50k and 200k files of 32 px, written in
parallel once and kept under ``--cache``), each stage runs in its own subprocess, so its peak RSS is its own:

* ``walk``: the layout scan of a fresh tree listing, and again with the walk index of the first
  (:class:`~experiments.data.walk.WalkIndex`);
* ``check fresh`` / ``check cached``: the data check of every file (``data.check=full``) with an empty per-file
  store, then with every result stored (:mod:`experiments.data.audit`);
* ``epoch radial_angular_logreg`` / ``epoch npr``: one epoch over a train split capped at
  :data:`EPOCH_IMAGES` images (``data.max_per_class``; the tree is still walked whole): the scikit-learn
  detector's features and fit, one Lightning epoch of NPR (Tan et al., CVPR 2024) at the tests' 32 px size, the
  loader in the main process. A full epoch over 200k images takes tens of minutes on two cores; the capped
  epoch measures the images/s of reading from a tree of that size;
* ``pack``: ``python run.py task=pack`` (encoded shards), its start-up included.

Every stage runs in a child forked from a fork server that imported the suite once (so no stage pays the
imports, and no child inherits the threads of a parent that has already computed something) and reports
images/s and its own peak RSS. The bench then checks that the start-up scales: the cost per image
of the walk and the checks at the largest size is within :data:`FLAT_RATIO` of the smallest, and their peak RSS
grows by less than :data:`MAX_RSS_GROWTH_MB`; it prints PASS or FAIL for each. Usage::

    python -m experiments.bench.scale [--sizes 10000,50000,200000] [--train-sizes 10000,50000,200000]
        [--epoch-images 2048,512] [--cache DIR] [--out reports]
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
GENERATORS = ("gen_a", "gen_b")
#: the class folders of the generated trees (GenImage's flat layout, ``data=genimage_tiny``)
FOLDERS = tuple((gen, split, cls) for gen in GENERATORS for split in ("train", "val") for cls in ("nature", "ai"))
DEFAULT_SIZES = (10_000, 50_000, 200_000)
#: train images of the capped epoch of each detector (``--epoch-images``)
EPOCH_IMAGES = {"radial_angular_logreg": 2048, "npr": 512}
IMAGE_PX = 32
#: largest / smallest cost per image allowed for the start-up stages
FLAT_RATIO = 1.5
#: peak RSS growth allowed from the smallest to the largest size, MB
MAX_RSS_GROWTH_MB = 2048.0
#: a check whose per-file results are all stored costs at most this share of a fresh check
MAX_CACHED_SHARE = 0.10
START_UP = ("walk", "walk indexed", "check fresh", "check cached")


# -- the trees ------------------------------------------------------------------------------------------------
def _write_chunk(job: tuple[str, int, int, int, int]) -> int:
    from PIL import Image

    folder, start, stop, size, seed = job
    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):  # noise: every file distinct, so the duplicate check has nothing to group
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{i:07d}.png"), compress_level=1)
    return stop - start


def generated_tree(n_images: int, cache_root: Path, size: int = IMAGE_PX, workers: int | None = None,
                   larger: Path | None = None) -> Path:
    """A GenImage-flat tree of ``n_images`` PNG files of ``size`` px under ``cache_root``, written by a process
    pool the first time (seeded) and reused after (a ``.complete`` marker says it is whole). With ``larger``, a
    complete generated tree of more files, its first files are hard-linked instead: file ``i`` of a folder holds
    the same pixels in every tree (seeded per folder and per block of 1,000), so the smaller tree is the same
    as one written afresh, in a fraction of the time."""
    root = cache_root / f"genimage_{n_images}_{size}px"
    if (root / ".complete").exists():
        return root
    per_folder = -(-n_images // len(FOLDERS))
    jobs = []
    for k, (gen, split, cls) in enumerate(FOLDERS):
        folder = root / gen / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        if larger is not None:
            for i in range(per_folder):
                name = f"{i:07d}.png"
                if not (folder / name).exists():
                    os.link(larger / gen / split / cls / name, folder / name)
            continue
        jobs += [(str(folder), a, min(a + 1000, per_folder), size, k) for a in range(0, per_folder, 1000)]
    if jobs:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            list(pool.map(_write_chunk, jobs))
    (root / ".complete").write_text(str(n_images))
    return root


# -- the stages (each in its own process) ---------------------------------------------------------------------
def _config(root: Path, work: Path, model: str = "radial_angular_logreg", epoch_images: int | None = None):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from experiments.training.builders import without_pretrained_weights

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            f"model={model}", "data=genimage_tiny", f"data.root={root}", f"data.crop_size={IMAGE_PX}",
            "data.resize_size=null", "data.batch_size=64", "data.persistent_workers=false",
            f"paths.cache_dir={work}", "trainer=cpu",
            *([f"data.max_per_class={max(1, epoch_images // 4)}", "data.num_workers=0"] if epoch_images else [])])
    return without_pretrained_weights(cfg)


def _datamodule(cfg):
    from experiments.training.builders import build_datamodule

    return build_datamodule(cfg)


def run_stage(stage: str, root: Path, work: Path, epoch_images: int | None = None) -> dict:
    """Time ``stage`` on the tree at ``root`` (caches under ``work``): ``{"seconds", "images"}``; an epoch stage
    trains on ``epoch_images`` train images (the four train classes capped alike)."""
    from experiments.data.audit import data_check_cache_dir, scan_dataset

    model = stage.removeprefix("epoch ") if stage.startswith("epoch ") else "radial_angular_logreg"
    cfg = _config(root, work, model, epoch_images if stage.startswith("epoch ") else None)
    if stage in ("walk", "walk indexed"):
        start = time.perf_counter()
        splits = _datamodule(cfg).check_layout()
        return {"seconds": time.perf_counter() - start, "images": sum(map(len, splits.values()))}
    if stage in ("check fresh", "check cached"):
        dm = _datamodule(cfg)
        dm.check_layout()
        start = time.perf_counter()
        report = scan_dataset(dm, progress=False, cache_dir=data_check_cache_dir(work), check="full")
        return {"seconds": time.perf_counter() - start, "images": report.n_images}
    if stage == "epoch radial_angular_logreg":
        return _sklearn_epoch(cfg)
    if stage == "epoch npr":
        return _lightning_epoch(cfg)
    raise ValueError(f"unknown stage {stage!r}")


def _sklearn_epoch(cfg) -> dict:
    from experiments.training.builders import build_kind

    dm = _datamodule(cfg)
    dm.setup("fit")
    kind = build_kind(cfg, pretrained=False)
    pipeline = kind.estimator_factory()
    start = time.perf_counter()
    x, y, _, _ = kind.features_of(dm, "train", pipeline[:1])
    pipeline[1:].fit(x, y)
    return {"seconds": time.perf_counter() - start, "images": len(y)}


def _lightning_epoch(cfg) -> dict:
    import lightning as L

    from experiments.training.builders import build_module

    dm = _datamodule(cfg)
    dm.setup("fit")
    module = build_module(cfg)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return {"seconds": time.perf_counter() - start, "images": len(dm.splits["train"])}



def pack_stage(root: Path, work: Path, timeout_s: float) -> dict:
    """Time ``python run.py task=pack`` on the tree (encoded file bytes, the default), its start-up included, into
    ``work/pack`` (removed first: a pack folder must be new)."""
    out = work / "pack"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, str(REPO / "run.py"), "task=pack", "data=genimage_tiny", f"data.root={root}",
               f"data.crop_size={IMAGE_PX}", "data.resize_size=null", f"paths.cache_dir={work}",
               f"paths.log_dir={work / 'logs'}", f"pack.out={out}"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"task=pack failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return {"seconds": time.perf_counter() - start, "images": -1}


# -- the driver -------------------------------------------------------------------------------------------------
@dataclass
class Row:
    size: int
    stage: str
    seconds: float
    images: int
    images_per_s: float
    ms_per_image: float
    peak_rss_mb: float
    note: str = ""


def _stage_child(conn, stage: str, root: Path, work: Path, epoch_images: int) -> None:
    try:
        got = run_stage(stage, root, work, epoch_images or None)
        got["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except Exception:  # noqa: BLE001 - sent to the parent, which raises it with the stage's name
        got = {"error": traceback.format_exc()}
    conn.send(got)
    conn.close()


def measure(stage: str, root: Path, work: Path, timeout_s: float, epoch_images: int = 0) -> dict:
    """Run ``stage`` in a child process forked from the fork server (the suite already imported there, so the child
    pays no start-up): its timing and its own peak RSS (MB; the imports included). A plain fork of this process
    could hang in the child when this process has run OpenMP work before (libgomp is not fork-safe)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(SUITE_MODULES)
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_stage_child, args=(send, stage, root, work, epoch_images))
    child.start()
    send.close()
    got = receive.recv() if receive.poll(timeout_s) else {"error": f"no result within {timeout_s:.0f} s"}
    child.join(10)
    if "error" in got:
        raise RuntimeError(f"stage {stage!r} on {root} failed:\n{got['error']}")
    return got


#: what the fork server imports once, before it forks the stages
SUITE_MODULES = ["lightning", "hydra", "experiments.data.audit", "experiments.training.builders"]


def bench(sizes: list[int], train_sizes: list[int], cache: Path, timeout_s: float = 1800.0,
          log=print, epoch_images: dict[str, int] | None = None) -> list[Row]:
    epoch_images = {**EPOCH_IMAGES, **(epoch_images or {})}
    rows = []
    start = time.perf_counter()
    largest = generated_tree(max(sizes), cache)  # the smaller trees link its first files
    log(f"[{max(sizes)}] tree {largest} ready in {time.perf_counter() - start:.1f} s")
    for n in sizes:
        start = time.perf_counter()
        root = generated_tree(n, cache, larger=largest if n < max(sizes) else None)
        log(f"[{n}] tree {root} ready in {time.perf_counter() - start:.1f} s")
        work = cache / f"work_{n}"
        shutil.rmtree(work, ignore_errors=True)  # fresh walk index and per-file store
        stages = [*START_UP] + ([f"epoch {m}" for m in EPOCH_IMAGES] if n in train_sizes else [])
        for stage in stages:
            got = measure(stage, root, work, timeout_s, epoch_images.get(stage.removeprefix("epoch "), 0))
            rows.append(_row(n, stage, got))
            if stage.startswith("epoch "):
                rows[-1].note = f"epoch of {got['images']} train images (data.max_per_class), loader in-process"
            log(f"[{n}] {stage}: {got['seconds']:.2f} s, {got['images']} images, peak RSS {got['peak_rss_mb']:.0f} MB")
        if n not in train_sizes:
            rows += [Row(n, f"epoch {m}", float("nan"), 0, float("nan"), float("nan"), float("nan"),
                         "not measured (--train-sizes)") for m in EPOCH_IMAGES]
        # -- the pack stage: python run.py task=pack, in its own process --------------------------------------
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        got = pack_stage(root, work, timeout_s)
        rows.append(Row(n, "pack", got["seconds"], n, n / got["seconds"], 1000 * got["seconds"] / n,
                        max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
                        "python run.py task=pack (start-up included)"))
        log(f"[{n}] pack: {got['seconds']:.2f} s, {n} images")
    return rows


def _row(n: int, stage: str, got: dict) -> Row:
    seconds, images = float(got["seconds"]), int(got["images"])
    return Row(n, stage, seconds, images, images / seconds if seconds else float("nan"),
               1000 * seconds / images if images else float("nan"), float(got["peak_rss_mb"]))


def verdicts(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """``(check, passed, detail)``: per start-up stage, cost per image at the largest size within
    :data:`FLAT_RATIO` of the smallest, and peak RSS growth below :data:`MAX_RSS_GROWTH_MB`; per size, the
    check whose per-file results are all stored within :data:`MAX_CACHED_SHARE` of a fresh one."""
    out = []
    seconds = {(r.size, r.stage): r.seconds for r in rows}
    for size in sorted({r.size for r in rows}):
        fresh, cached = seconds.get((size, "check fresh")), seconds.get((size, "check cached"))
        if fresh and cached is not None:
            share = cached / fresh
            out.append((f"check cached at {size}: share of a fresh check", share <= MAX_CACHED_SHARE,
                        f"{cached:.2f} s / {fresh:.2f} s = {100 * share:.1f} % (limit {100 * MAX_CACHED_SHARE:.0f} %)"))
    for stage in START_UP:
        mine = sorted((r for r in rows if r.stage == stage and r.images > 0), key=lambda r: r.size)
        if len(mine) < 2:
            continue
        small, large = mine[0], mine[-1]
        ratio = large.ms_per_image / small.ms_per_image
        out.append((f"{stage}: cost per image flat", ratio <= FLAT_RATIO,
                    f"{large.ms_per_image:.4f} ms at {large.size} / {small.ms_per_image:.4f} ms at {small.size} "
                    f"= {ratio:.2f} (limit {FLAT_RATIO})"))
        growth = large.peak_rss_mb - small.peak_rss_mb
        out.append((f"{stage}: peak RSS growth", growth < MAX_RSS_GROWTH_MB,
                    f"{small.peak_rss_mb:.0f} -> {large.peak_rss_mb:.0f} MB (+{growth:.0f}, limit {MAX_RSS_GROWTH_MB:.0f})"))
    return out


def _fmt(value: float, digits: int) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def to_markdown(rows: list[Row], checks: list[tuple[str, bool, str]], info: str) -> str:
    lines = [f"Start-up at scale ({info})", "",
             "| images | stage | seconds | images/s | ms/image | peak RSS (MB) | note |", "|---:|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r.size} | {r.stage} | {_fmt(r.seconds, 2)} | {_fmt(r.images_per_s, 0)} | {_fmt(r.ms_per_image, 4)} "
              f"| {_fmt(r.peak_rss_mb, 0)} | {r.note} |" for r in rows]
    lines += ["", *(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in checks)]
    return "\n".join(lines) + "\n"


def write_reports(rows: list[Row], checks, out_dir: Path, info: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, table = out_dir / "bench_scale.md", out_dir / "bench_scale.csv"
    md.write_text(to_markdown(rows, checks, info))
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return md, table


def machine() -> str:
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load} at the end"


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--train-sizes", default=None,
                        help="sizes at which the training epochs run (default: every size; '' = none)")
    parser.add_argument("--epoch-images", default=",".join(map(str, EPOCH_IMAGES.values())),
                        help="train images of the epoch of radial_angular_logreg,npr")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "spectral-bench-scale"),
                        help="where the generated trees are kept between runs")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)
    sizes = _sizes(args.sizes)
    train_sizes = sizes if args.train_sizes is None else _sizes(args.train_sizes)
    rows = bench(sizes, train_sizes, Path(args.cache), epoch_images=dict(zip(EPOCH_IMAGES, _sizes(args.epoch_images))))
    checks = verdicts(rows)
    md, table = write_reports(rows, checks, Path(args.out), machine())
    print(to_markdown(rows, checks, machine()))
    print(f"wrote {md} and {table}")
    return rows


if __name__ == "__main__":
    main()
