"""``make bench-gpu``: does the GPU train, and is it fed? Writes ``reports/bench_gpu.{md,csv}``.

Per CNN detector, at 224 px (``--size``), with the settings a run uses (``channels_last``,
``precision=auto``, i.e. bf16-mixed on current GPUs):

* **bare step**: images/s of forward + backward + optimiser step on GPU-resident tensors;
* **fit from files / from the cache**: images/s of a Lightning ``fit`` (epochs after the first) over a
  synthetic JPEG dataset, read from the files (``data.decode=device``: bytes decoded batched by nvJPEG) and
  from the decode-once cache (``data.cache=true``), with the ratio fit / bare step: how well the input
  pipeline keeps the accelerator busy;
* **peak GPU memory** of the bare step;
* **finite under 16-mixed / bf16-mixed / 32-true**: whether every loss of a few training steps was finite.

It needs CUDA and says so otherwise; ``--allow-cpu`` runs the same code on the CPU at toy sizes (for tests).
Usage::

    python -m experiments.bench.gpu [--models resnet34_localfft,...] [--size 224] [--batch 256] [--images 4096]
"""

from __future__ import annotations

from experiments.process import use_huge_pages

if __name__ == "__main__":  # an entry point: before torch is imported
    use_huge_pages()

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from experiments.bench.throughput import Row, compose_model, machine, peak_rss_mb, print_table, write_reports
from experiments.training.builders import build_kind
from experiments.training.kinds import AUTOCAST_DTYPES, Throughput, synchronize

CNN_DETECTORS = ("resnet34_localfft", "spectraforge_dual", "efficientnet_spatial", "resnet50_fft")
#: every precision the training step supports, as Lightning names them
PRECISIONS = tuple(AUTOCAST_DTYPES)


class NeedsCuda(SystemExit):
    """Raised (exit code 2) when no CUDA device is present and ``--allow-cpu`` was not given."""


@dataclass
class Setup:
    device: str
    size: int
    batch: int
    steps: int
    precision: str


def write_jpeg_dataset(root: Path, n_images: int, size: int, seed: int = 0) -> Path:
    """``n_images`` JPEGs (quality 90, ``size`` px, half "fake") in the flat GenImage layout under ``root``."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_images), ("val", max(n_images // 8, 8))):
        for cls in ("nature", "ai"):
            folder = root / "bench" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n // 2):
                low = rng.integers(40, 215, (size // 16, size // 16, 3), dtype=np.uint8)
                img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
                img.save(folder / f"{i:05d}.jpg", "JPEG", quality=90)
    return root


def _cfg(model: str, setup: Setup, data_root: Path | None = None, extra: tuple[str, ...] = ()):
    overrides = [f"model={model}", f"trainer.precision={setup.precision}", "model.channels_last=auto"]
    if data_root is not None:
        overrides += ["data=genimage_tiny", f"data.root={data_root}", f"data.crop_size={setup.size}",
                      f"data.resize_size={setup.size}", f"data.batch_size={setup.batch}", "data.val_fraction=0.05"]
    return compose_model(model, [*overrides, *extra])


def bare_step(model: str, setup: Setup, precision: str | None = None) -> Throughput:
    """images/s, peak GPU MiB, and whether every loss was finite, of ``setup.steps`` training steps on
    device-resident tensors (``precision`` default: ``setup.precision``)."""
    cfg = _cfg(model, setup)
    return build_kind(cfg).throughput(setup.size, setup.batch, setup.steps, setup.device,
                                      precision or setup.precision, warmup=2)


class _EpochTimer(L.Callback):
    """Wall time and images of each training epoch."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        synchronize(pl_module.device.type)
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += 0 if batch.get("empty") else len(batch["label"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device.type)
        self.epochs.append((time.perf_counter() - self._start, self._images))


def lightning_fit(model: str, setup: Setup, data_root: Path, cache: bool, epochs: int = 3) -> float:
    """images/s of the Lightning fit's epochs after the first (worker start-up, cuDNN autotuning and the
    cache build excluded), data from the JPEG files or from the cache."""
    from experiments.training.builders import build_datamodule, build_module, trainer_precision

    decode = "cpu" if cache or setup.device != "cuda" else "device"
    # no validation in the timed fit, so no scheduler that waits for a validation metric
    cfg = _cfg(model, setup, data_root, ("model.scheduler=null", f"data.cache={str(cache).lower()}",
                                         f"data.decode={decode}",
                                         f"paths.cache_dir={data_root.parent / 'cache'}"))
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    timer = _EpochTimer()
    trainer = L.Trainer(accelerator="gpu" if setup.device == "cuda" else "cpu", devices=1,
                        precision=trainer_precision(cfg), max_epochs=epochs, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    timed = timer.epochs[1:] or timer.epochs
    return sum(n for _, n in timed) / sum(s for s, _ in timed)


def run(models: tuple[str, ...], setup: Setup, n_images: int, precisions: tuple[str, ...] = PRECISIONS) -> list[Row]:
    rows: list[Row] = []
    name = torch.cuda.get_device_name() if setup.device == "cuda" else "CPU"
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        data_root = write_jpeg_dataset(Path(tmp) / "data", n_images, setup.size + setup.size // 8)
        for model in models:
            speed = bare_step(model, setup)
            bare, peak = speed.images_per_s, speed.cuda_max_alloc_mb
            finite = {p: bare_step(model, Setup(setup.device, setup.size, setup.batch, 3, p), p).finite
                      for p in precisions}
            verdict = ", ".join(f"{p}: {'finite' if ok else 'NON-FINITE'}" for p, ok in finite.items())
            rows.append(Row("gpu", model, f"bare step {setup.precision}, {name}", bare, setup.size, setup.batch,
                            peak_rss_mb=peak_rss_mb(), cuda_max_alloc_mb=peak, note=verdict))
            for cache in (False, True):
                fit = lightning_fit(model, setup, data_root, cache)
                source = "cache" if cache else ("JPEG files, nvJPEG" if setup.device == "cuda" else "JPEG files")
                rows.append(Row("gpu", model, f"Lightning fit from {source}", fit, setup.size, setup.batch,
                                speedup=fit / bare, peak_rss_mb=peak_rss_mb(),
                                note=f"fit / bare step = {fit / bare:.2f}"))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CNN_DETECTORS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed bare steps")
    parser.add_argument("--images", type=int, default=4096, help="training images of the synthetic JPEG set")
    parser.add_argument("--precision", default="auto", help="precision of the throughput rows (auto = the run's)")
    parser.add_argument("--out", default=os.path.join(os.environ.get("SUITE_ROOT", "."), "reports"))
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (toy sizes; for tests)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("make bench-gpu needs a CUDA device, and none is visible (torch.cuda.is_available() is False). "
              "Run it on a GPU machine; `make bench` measures the CPU.", file=sys.stderr)
        raise NeedsCuda(2)
    from experiments.training.builders import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = str(resolve_precision(args.precision, "gpu" if device == "cuda" else "cpu"))
    setup = Setup(device, args.size, args.batch, args.steps, precision)
    torch.backends.cudnn.benchmark = device == "cuda"
    rows = run(tuple(args.models.split(",")), setup, args.images)
    info = machine()
    info["precision"] = precision
    md, csv_path = write_reports(rows, Path(args.out), info, stem="bench_gpu")
    print_table(rows)
    print(f"wrote {md} and {csv_path}")
    return rows


if __name__ == "__main__":
    main()
