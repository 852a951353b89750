"""``make bench``: throughput of features, data loading and training; writes ``reports/bench.{md,csv}``.

Sections:

1. **features**: images/s of each batched torch feature (CPU) against the
   per-image NumPy reference of the same maths
   (:mod:`experiments.bench.reference_numpy`), after checking both give the same
   numbers; the blur is also timed against OpenCV's tuned ``GaussianBlur``.
   The torch side is also timed on one thread: its speed-up over the
   one-core reference, times the thread count, bounds what threading can give.
   Default: 224 px, batch 64.
2. **data** (:mod:`experiments.bench.loading`): images/s of one pass over the
   demo train split, read from the files, from the decoded pack of
   ``data.cache=true`` (ordered and shuffled) beside the ``.npy`` memmap cache it
   replaced (:mod:`experiments.bench.reference_cache`), and from an encoded pack
   (``task=pack`` / ``data=packed``), plus the time to build each, at 64 and 224 px.
3. **train**: images/s of a few optimisation steps of each detector at its demo
   size (64 px) on CPU; the scikit-learn detector's ``fit``. GPU training is
   measured by ``make bench-gpu`` (:mod:`experiments.bench.gpu`).

Peak memory: process peak RSS after each row, and CUDA max allocated when present.
Timings are the best of ``--repeats`` after a warm-up; a feature and its references are timed in
alternation, so a slow spell of a shared machine affects each alike. Usage::

    python -m experiments.bench.throughput [--size 224] [--batch 64] [--repeats 3] [--out reports] [--only features,data,train]
        [--data-sizes 64,224]
"""

from __future__ import annotations

from experiments.process import conf_dir, use_huge_pages

if __name__ == "__main__":  # an entry point: before torch is imported
    use_huge_pages()

import argparse
import contextlib
import csv
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from experiments.bench import reference_numpy as ref
from experiments.bench.timing import Row, best_time, best_times_interleaved, peak_rss_mb  # noqa: F401
from experiments.training.builders import build_kind, without_pretrained_weights
from features import FFTMagnitude, GaussianBottleneck, LaplacianResidual, LocalPatchFFT, RadialAngularHistogram

CONF_DIR = conf_dir()
def suite_detectors() -> tuple[str, ...]:
    """The suite's detectors, as ``conf/config.yaml`` lists them (``detectors:``)."""
    from omegaconf import OmegaConf

    return tuple(OmegaConf.load(CONF_DIR / "config.yaml").detectors)


DETECTORS = suite_detectors()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch's CPU ops on one thread inside the block (the NumPy references use one core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |b|``: the error relative to the reference's range."""
    scale = float(np.abs(b).max()) or 1.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() / scale)


# -- 1. features --------------------------------------------------------------------------------------------
@dataclass
class FeatureCase:
    name: str
    torch_fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    ref_fn: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    tol: float = 1e-4
    #: an optimised per-image library implementation, checked and timed alongside: ``(name, fn)``
    library: tuple[str, Callable[[np.ndarray], tuple[np.ndarray, ...]]] | None = None


def feature_cases() -> list[FeatureCase]:
    local = LocalPatchFFT(patch_size=32)
    fftmag = FFTMagnitude(standardize=True)
    resid = LaplacianResidual(grayscale=True)
    radial = RadialAngularHistogram(n_radial=64, n_angular=64, use_residual=True, max_radius=math.sqrt(2.0))
    blur = GaussianBottleneck(sigma=1.5)

    def residual_torch(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t[:, 0] for t in resid.spectra(x))

    return [
        FeatureCase("LocalPatchFFT(32)", lambda x: (local(x),), lambda im: (ref.local_patch_fft(im, 32),)),
        FeatureCase("FFTMagnitude(std)", lambda x: (fftmag(x),), lambda im: (ref.fft_magnitude(im),), 1e-3),
        FeatureCase("LaplacianResidual+power+autocorr", residual_torch, ref.residual_spectra),
        FeatureCase("RadialAngularHistogram(64,64,res)", lambda x: (radial(x),),
                    lambda im: (ref.radial_angular_histogram(im, 64, 64, True, math.sqrt(2.0)),), 1e-3),
        FeatureCase("GaussianBottleneck(1.5)", lambda x: (blur(x),), lambda im: (ref.gaussian_bottleneck(im, 1.5),),
                    library=("OpenCV GaussianBlur per image", lambda im: (ref.gaussian_bottleneck_opencv(im, 1.5),))),
    ]


def check_case(case: FeatureCase, x: torch.Tensor) -> float:
    """Run torch and every reference on ``x``; raise if they differ by more than ``case.tol``; return the error."""
    with torch.inference_mode():
        got = [t.numpy() for t in case.torch_fn(x)]
    images = x.numpy()
    references = [("the NumPy reference", case.ref_fn)]
    if case.library is not None:
        references.append(case.library)
    worst = 0.0
    for label, fn in references:
        outs = [np.stack(r) for r in zip(*(fn(im) for im in images))]
        err = max(max_rel_err(g, r) for g, r in zip(got, outs))
        if not err <= case.tol:
            raise AssertionError(f"{case.name}: torch and {label} differ (max rel. error {err:.2e})")
        worst = max(worst, err)
    return worst


def bench_features(size: int, batch: int, repeats: int, seed: int = 0, min_time: float = 0.5) -> list[Row]:
    x = torch.from_numpy(np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32))
    images = x.numpy()
    rows = []
    for case in feature_cases():
        err = check_case(case, x)

        def run_torch() -> None:
            with torch.inference_mode():
                case.torch_fn(x)

        def run_torch_one_thread() -> None:
            with one_torch_thread():
                run_torch()

        fns = [run_torch, run_torch_one_thread, lambda: [case.ref_fn(im) for im in images]]
        if case.library is not None:
            label, library_fn = case.library
            fns.append(lambda: [library_fn(im) for im in images])
        t_torch, t_one, t_ref, *t_library = best_times_interleaved(fns, repeats, min_total=min_time)
        rss = peak_rss_mb()
        note = f"{t_library[0] / t_torch:.1f}x against {label}" if t_library else ""
        rows.append(Row("features", case.name, f"torch batched (CPU, {torch.get_num_threads()} threads)",
                        batch / t_torch, size, batch, speedup=t_ref / t_torch, max_rel_err=err, peak_rss_mb=rss,
                        note=note))
        rows.append(Row("features", case.name, "torch batched (CPU, 1 thread)", batch / t_one, size, batch,
                        speedup=t_ref / t_one, peak_rss_mb=rss,
                        note="per-core speed-up; times the thread count, it bounds the threaded one"))
        rows.append(Row("features", case.name, "NumPy per image", batch / t_ref, size, batch,
                        speedup=1.0, peak_rss_mb=rss))
        if t_library:
            t_lib = t_library[0]
            rows.append(Row("features", case.name, label, batch / t_lib, size, batch, speedup=t_ref / t_lib,
                            peak_rss_mb=peak_rss_mb(), note="tuned C++/SIMD library, for comparison"))
    return rows


# -- 3. training --------------------------------------------------------------------------------------------
def compose_model(model: str, overrides: list[str] = ()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}", *overrides])
    return without_pretrained_weights(cfg)  # speed does not depend on the weights: never download them here


def bench_training(steps: int, batch: int, models=DETECTORS) -> list[Row]:
    rows = []
    for model in models:
        cfg = compose_model(model, ["experiment=demo"])
        size = int(cfg.data.crop_size)
        speed = build_kind(cfg).throughput(size, batch, steps, "cpu")
        rows.append(Row("train", model, speed.description, speed.images_per_s, size, batch,
                        peak_rss_mb=peak_rss_mb(), note=f"demo preset, {steps} steps"))
    return rows


# -- reporting ----------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "load_avg": " ".join(f"{v:.2f}" for v in load),
    }


def _fmt(v: float, digits: int = 1) -> str:
    return "" if v != v else f"{v:,.{digits}f}"


def to_markdown(rows: list[Row], info: dict[str, str]) -> str:
    lines = ["# Benchmark", "", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             "| section | name | implementation | size | batch | images/s | speed-up | max rel. err | peak RSS MiB "
             "| CUDA max alloc MiB | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r.section} | {r.name} | {r.impl} | {r.size} | {r.batch} | {_fmt(r.images_per_s)} | "
            f"{_fmt(r.speedup) + 'x' if r.speedup == r.speedup else ''} | "
            f"{'' if r.max_rel_err != r.max_rel_err else f'{r.max_rel_err:.1e}'} | {_fmt(r.peak_rss_mb, 0)} | "
            f"{_fmt(r.cuda_max_alloc_mb, 0)} | {r.note} |")
    return "\n".join(lines) + "\n"


def write_reports(rows: list[Row], out_dir: Path, info: dict[str, str], stem: str = "bench") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    md.write_text(to_markdown(rows, info))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) + list(info))
        writer.writeheader()
        for r in rows:
            writer.writerow({**asdict(r), **info})
    return md, csv_path


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="throughput (images/s)")
    for col in ("section", "name", "impl", "size", "images/s", "speed-up", "peak RSS MiB", "CUDA MiB"):
        table.add_column(col, justify="right" if col not in ("section", "name", "impl") else "left")
    for r in rows:
        table.add_row(r.section, r.name, r.impl, str(r.size), _fmt(r.images_per_s),
                      _fmt(r.speedup) + ("x" if r.speedup == r.speedup else ""), _fmt(r.peak_rss_mb, 0),
                      _fmt(r.cuda_max_alloc_mb, 0))
    Console(width=160).print(table)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="feature benchmark image side")
    parser.add_argument("--batch", type=int, default=64, help="feature benchmark batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls at least (best one kept)")
    parser.add_argument("--min-time", type=float, default=0.5, help="keep repeating a feature timing this long")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=32)
    data = os.path.join(os.environ.get("SUITE_ROOT", "."), "data")
    parser.add_argument("--data-root", default=os.path.join(data, "demo"), help="the 64 px demo (built if missing)")
    parser.add_argument("--data-root-224", default=os.path.join(data, "demo_224"),
                        help="the 224 px demo of the data rows (built if missing: 100 images per class and generator)")
    parser.add_argument("--data-sizes", default="64,224", help="image sides of the data rows")
    parser.add_argument("--out", default=os.path.join(os.environ.get("SUITE_ROOT", "."), "reports"))
    parser.add_argument("--only", default="features,data,train", help="comma-separated sections to run")
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    info = machine()
    rows: list[Row] = []
    if "features" in sections:
        rows += bench_features(args.size, args.batch, args.repeats, min_time=args.min_time)
    if "data" in sections:
        from experiments.bench.loading import bench_data

        roots = {64: Path(args.data_root), 224: Path(args.data_root_224)}
        rows += bench_data({int(z): roots[int(z)] for z in args.data_sizes.split(",")}, args.repeats)
    if "train" in sections:
        rows += bench_training(args.train_steps, args.train_batch)
    info["load_avg_end"] = machine()["load_avg"]
    md, csv_path = write_reports(rows, Path(args.out), info)
    print_table(rows)
    print(f"wrote {md} and {csv_path}")
    return rows


if __name__ == "__main__":
    main()
