"""The benchmark's NumPy references equal the torch features, and ``python -m experiments.bench.throughput`` writes its reports.

Speed ratios are reported by ``make bench``, not asserted: on a shared 2-core machine they are too noisy.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from experiments.bench import throughput as bench
from experiments.bench import reference_numpy as ref
from features import RadialAngularHistogram


@pytest.mark.parametrize("case", bench.feature_cases(), ids=lambda c: c.name)
def test_reference_equals_torch(case):
    x = torch.from_numpy(np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32))
    assert bench.check_case(case, x) <= case.tol


@pytest.mark.parametrize("size", [(48, 48), (224, 224), (31, 33), (96, 64)], ids=str)
def test_radial_bins_equal_the_reference_grid_edge_ties_included(size):
    module = RadialAngularHistogram(64, 64, use_residual=True, max_radius=math.sqrt(2.0))
    own = ref.frequency_bins(*size, 64, 64, math.sqrt(2.0))
    for ours, theirs in zip(module.bin_indices(*size, "cpu"), own):
        np.testing.assert_array_equal(ours.numpy(), theirs)
    x = torch.from_numpy(np.random.default_rng(2).random((2, 3, *size), dtype=np.float32))
    with torch.inference_mode():
        got = module(x).numpy()
    expected = np.stack([ref.radial_angular_histogram(im, 64, 64, True, math.sqrt(2.0)) for im in x.numpy()])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_bench_cli_writes_markdown_and_csv(tmp_path, capsys):
    threads = torch.get_num_threads()
    rows = bench.main(["--only", "features", "--size", "32", "--batch", "2", "--repeats", "1", "--min-time", "0",
                       "--out", str(tmp_path)])
    assert {r.name for r in rows} == {c.name for c in bench.feature_cases()}
    assert all(r.images_per_s > 0 for r in rows)
    md = (tmp_path / "bench.md").read_text()
    assert "LocalPatchFFT(32)" in md and "Machine:" in md
    with (tmp_path / "bench.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16 and float(table[0]["speedup"]) > 0
    one_thread = [r for r in rows if r.impl == "torch batched (CPU, 1 thread)"]
    assert len(one_thread) == len(bench.feature_cases()) and torch.get_num_threads() == threads
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_data_and_training_sections(tmp_path):
    from tests.conftest import make_genimage_tree

    root = make_genimage_tree(tmp_path / "demo", n=8, size=64)
    rows = bench.main(["--only", "data,train", "--data-root", str(root), "--data-sizes", "64", "--repeats", "1",
                       "--train-steps", "1", "--train-batch", "4", "--out", str(tmp_path)])
    names = {(r.section, r.name) for r in rows}
    assert ("data", "DataLoader") in names and ("data", "pack build") in names
    impls = {r.impl for r in rows if r.section == "data"}
    assert {"previous cache: .npy memmap, shuffled", "decoded pack, shuffled (seeded DistributedSampler)",
            "previous cache: decode + write .npy (1 process)", "decoded pack: decode + write once"} <= impls
    assert {n for s, n in names if s == "train"} == set(bench.DETECTORS)


def test_bench_gpu_says_it_needs_cuda(capsys, monkeypatch):
    from experiments.bench import gpu as bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench_gpu.main([])
    assert exit_info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_gpu_code_path_runs_on_cpu_at_toy_size(tmp_path):
    from experiments.bench import gpu as bench_gpu

    rows = bench_gpu.main(["--allow-cpu", "--models", "resnet34_localfft", "--size", "32", "--batch", "8",
                           "--steps", "2", "--images", "32", "--out", str(tmp_path)])
    assert [r.impl.split(",")[0] for r in rows] == [
        "bare step 32-true", "Lightning fit from JPEG files", "Lightning fit from cache"]
    assert all(r.images_per_s > 0 for r in rows)
    assert rows[0].note == "16-mixed: finite, bf16-mixed: finite, 32-true: finite"
    assert (tmp_path / "bench_gpu.md").exists()


def test_the_previous_cache_reference_holds_the_crops_of_the_decoded_pack(tmp_path):
    """The build and read the pack rows are compared with store the same crops (a like-for-like timing)."""
    from experiments.bench.reference_cache import ArrayDataset, build_array
    from experiments.data.shards import TokenChunks, write_pack
    from tests.conftest import make_genimage_tree, small_datamodule

    root = make_genimage_tree(tmp_path / "g", n=3, size=32)
    dm = small_datamodule(root)
    train = dm.splits["train"]
    build_array(train, dm.preprocess, tmp_path / "old")
    write_pack({"train": train}, tmp_path / "pack", root, dm.layout.class_names, preprocess=dm.preprocess, workers=1)
    old = ArrayDataset(train, tmp_path / "old", dm.generator_names)
    index = np.random.default_rng(0).permutation(len(train))
    batch = old.__getitems__(index.tolist())
    assert np.array_equal(batch["image"].numpy(), TokenChunks(tmp_path / "pack" / "train", 24).gather(index))
    assert torch.equal(batch["index"], torch.from_numpy(index))
