"""Packs (``task=pack`` / ``data=packed``): the same batches and the same detector scores as the files, the
unusable files counted, resumable shuffled iteration, and clear errors."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from experiments.data.integrity import read_manifest
from experiments.data.packed import PackedDataModule
from experiments.data.shards import NotAPackError, PackedSplit, TokenChunks, read_info, write_pack
from experiments.training.sklearn_io import collect_features
from tests.conftest import collect_batches as _all, compose_config, make_genimage_tree, small_datamodule as _dm

SMALL = dict(crop_size=24, resize_size=None, batch_size=8, num_workers=0, val_fraction=0.25)


def _packed(location, tmp_path, **kw) -> PackedDataModule:
    dm = PackedDataModule(name="packed", root=str(location), cache_dir=str(tmp_path / "c"), **{**SMALL, **kw})
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """2 generators x 2 classes x 6 images of 32 px per folder, one empty and one broken file among them."""
    root = make_genimage_tree(tmp_path_factory.mktemp("tree") / "g", n=6, size=32)
    (root / "gen_a" / "val" / "ai" / "empty.png").write_bytes(b"")
    (root / "gen_b" / "train" / "nature" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.mark.parametrize("decoded", [False, True], ids=["encoded", "decoded"])
def test_pack_batches_equal_file_batches(tree, tmp_path, decoded):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    info = write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names,
                      preprocess=files.preprocess if decoded else None, workers=2)
    assert info.mode == ("decoded" if decoded else "encoded") and info.n_bad == 2
    packed = _packed(tmp_path / "pack", tmp_path)
    assert packed.generator_names == files.generator_names == ["gen_a", "gen_b"]
    for split in ("train", "val", "test"):
        assert isinstance(packed.datasets[split], PackedSplit)
        assert [s.relpath for s in packed.splits[split]] == [s.relpath for s in files.splits[split]]
        a, b = _all(files._loader(split, shuffle=False)), _all(packed._loader(split, shuffle=False))
        assert torch.equal(a["index"], b["index"]), split
        assert torch.equal(a["image"], b["image"]), split  # bit for bit
        assert a["skipped"] == b["skipped"]
    assert sum(_all(packed._loader(s, False))["skipped"] for s in packed.splits) == 2


def test_pack_records_hashes_and_unusable_files(tree, tmp_path):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1)
    info = read_info(tmp_path / "pack")
    assert {b.relpath: b.reason for bad in info.bad.values() for b in bad} == {
        "gen_a/val/ai/empty.png": "empty file", "gen_b/train/nature/broken.png": "truncated"}
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    assert len(rows) == sum(len(v) for v in files.splits.values())
    row = rows[0]
    data = (tree / row.relpath).read_bytes()
    assert row.size == len(data) and row.sha256 == hashlib.sha256(data).hexdigest()


def test_trained_detector_scores_identically_from_pack_and_files(tree, tmp_path):
    cfg = compose_config(["model=radial_angular_logreg", "model.estimator.features.n_radial=16",
                          "model.estimator.features.n_angular=8"], tmp_path)
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1)
    packed = _packed(tmp_path / "pack", tmp_path)
    fitted = []
    for dm in (files, packed):
        pipeline = instantiate(cfg.model.estimator)
        x, y, _, _ = collect_features(dm._loader("train", shuffle=False), pipeline[:1])
        pipeline[1:].fit(x, y)
        fitted.append(pipeline)
    for split in ("val", "test"):
        probs = []
        for pipeline, dm in zip(fitted, (files, packed)):
            x, _, _, index = collect_features(dm._loader(split, shuffle=False), pipeline[:1])
            probs.append((pipeline[1:].predict_proba(x)[:, 1], index))
        np.testing.assert_array_equal(probs[0][1], probs[1][1])
        np.testing.assert_array_equal(probs[0][0], probs[1][0])  # same predictions, exactly


@pytest.mark.parametrize("decoded", [False, True], ids=["encoded", "decoded"])
def test_shuffled_iteration_resumes_from_the_loader_state(tree, tmp_path, decoded):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1,
               preprocess=files.preprocess if decoded else None)
    packed = _packed(tmp_path / "pack", tmp_path, batch_size=4)
    # LitData's StreamingDataLoader: the training read of an encoded or remote pack (a local decoded pack's
    # is a map-style loader, test_decoded_training_order_is_seeded_per_epoch_and_sharded_by_rank)
    stream = lambda: packed._streaming_loader("train", shuffle=True)  # noqa: E731
    loader = stream()
    batches = list(loader)
    full = torch.cat([b["index"] for b in batches]).tolist()
    ordered = _all(files._loader("train", shuffle=False))
    order = torch.argsort(torch.cat([b["index"] for b in batches]))
    assert torch.equal(torch.cat([b["image"] for b in batches])[order], ordered["image"])  # the same crops
    usable = sorted(set(range(len(files.splits["train"]))) - {12})  # gen_b/train/nature/broken.png is skipped
    assert files.splits["train"][12].relpath == "gen_b/train/nature/broken.png"
    assert sorted(full) == usable != full  # every usable image once, shuffled
    interrupted = stream()
    seen = []
    for i, batch in enumerate(interrupted):
        seen.append(batch["index"])
        if i == 1:
            state = interrupted.state_dict()
            break
    resumed = stream()
    resumed.load_state_dict(state)
    rest = [b["index"] for b in resumed]
    assert len(seen) == 2 and sorted(torch.cat(seen + rest).tolist()) == usable  # the rest of the same epoch


def test_decoded_batches_are_gathered_across_chunks(tree, tmp_path):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1,
               preprocess=files.preprocess, chunk_bytes=5 * 3 * 24 * 24)  # five crops a chunk
    chunks = TokenChunks(tmp_path / "pack" / "train", 24)
    assert len(chunks.chunks) > 2 and chunks.bounds[-1] == len(files.splits["train"])
    index = np.random.default_rng(0).permutation(chunks.bounds[-1])
    one_by_one = np.stack([chunks.gather(np.array([i]))[0] for i in index])
    assert np.array_equal(chunks.gather(index), one_by_one)
    assert np.array_equal(chunks.gather(index[:3]), one_by_one[:3])
    file_ds = files.datasets["train"]
    for i in index[:6]:
        if file_ds[int(i)] is not None:
            assert torch.equal(torch.from_numpy(chunks.gather(np.array([i]))[0]), file_ds[int(i)]["image"])


def test_encoded_chunks_are_not_read_as_crops(tree, tmp_path):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1)
    with pytest.raises(NotAPackError, match="TokensLoader"):
        TokenChunks(tmp_path / "pack" / "train", 24)


def test_a_pack_of_another_format_is_refused_with_what_to_do(tree, tmp_path):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1)
    meta = tmp_path / "pack" / "pack.json"
    meta.write_text(meta.read_text().replace('"format": 2', '"format": 1'))
    with pytest.raises(NotAPackError, match="format 1.*task=pack"):
        read_info(tmp_path / "pack")


def test_a_truncated_chunk_of_a_decoded_pack_is_named(tree, tmp_path):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1, preprocess=files.preprocess)
    chunk = sorted((tmp_path / "pack" / "val").glob("*.bin"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with pytest.raises(NotAPackError, match=chunk.name):
        TokenChunks(tmp_path / "pack" / "val", 24)


def _order(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return torch.cat([b["index"] for b in loader]).tolist()


def test_decoded_training_order_is_seeded_per_epoch_and_sharded_by_rank(tree, tmp_path, monkeypatch):
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1,
               preprocess=files.preprocess, chunk_bytes=5 * 3 * 24 * 24)  # several chunks
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    packed = _packed(tmp_path / "pack", tmp_path, batch_size=4)
    monkeypatch.setattr(PackedSplit, "__getitem__", lambda *a: pytest.fail("read item by item"))
    loader = packed.train_dataloader()  # whole batches (__getitems__), not LitData's item stream
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and loader.sampler.shuffle
    ordered = _all(files._loader("train", shuffle=False))
    usable = ordered["index"].tolist()
    epochs = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        got = _all(loader)
        order = torch.argsort(got["index"])
        assert torch.equal(got["index"][order], ordered["index"])  # every usable image once per epoch
        assert torch.equal(got["image"][order], ordered["image"])  # and its crop, bit for bit
        assert sorted(got["index"].tolist()) == usable != got["index"].tolist()  # shuffled
        epochs.append(got["index"].tolist())
    assert epochs[0] != epochs[1]  # a new order each epoch
    again = _packed(tmp_path / "pack", tmp_path, batch_size=4)
    assert _order(again.train_dataloader(), 1) == epochs[1]  # the same seed and epoch: the same order
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert _order(again.train_dataloader(), 1) != epochs[1]  # the run's seed changes it
    ranks, read = [], []
    for rank in (0, 1):  # under DDP each rank reads its share (the sampler Lightning would inject)
        monkeypatch.setattr(again, "trainer", SimpleNamespace(world_size=2, global_rank=rank, num_devices=1,
                                                          strategy=SimpleNamespace(root_device=torch.device("cpu"))))
        ranks.append(list(again.train_dataloader().sampler))
        read += _order(again.train_dataloader(), 0)
    n = len(files.splits["train"])
    assert len(set(ranks[0]) & set(ranks[1])) == n % 2 and set(ranks[0]) | set(ranks[1]) == set(range(n))
    assert set(read) == set(usable)


def test_decoded_chunks_are_litdata_token_streams(tree, tmp_path, monkeypatch):
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    from experiments.data import crops

    monkeypatch.setattr(crops, "MIN_PER_PROCESS", 4)  # two decoding processes for this small split
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=2,
               preprocess=files.preprocess, chunk_bytes=7 * 3 * 24 * 24)
    chunks = TokenChunks(tmp_path / "pack" / "train", 24)
    stream = StreamingDataset(str(tmp_path / "pack" / "train"), item_loader=TokensLoader(block_size=3 * 24 * 24))
    assert len(stream) == chunks.bounds[-1] == len(files.splits["train"]) and len(chunks.chunks) > 2
    litdata_crops = np.stack([np.asarray(stream[i]).reshape(3, 24, 24) for i in range(len(stream))])
    assert np.array_equal(litdata_crops, chunks.gather(np.arange(len(stream))))
    ordered = _all(files._loader("train", shuffle=False))
    assert np.array_equal(litdata_crops[ordered["index"].numpy()], ordered["image"].numpy())  # the files' crops
    info = read_info(tmp_path / "pack")
    assert [b.relpath for b in info.bad["train"]] == ["gen_b/train/nature/broken.png"]
    rows = read_manifest(tmp_path / "pack" / "manifest.csv")
    data = (tree / rows[0].relpath).read_bytes()
    assert rows[0].size == len(data) and rows[0].sha256 == hashlib.sha256(data).hexdigest()


def test_a_decoded_split_is_the_same_read_alone_in_threads_or_in_processes(tree, tmp_path, monkeypatch):
    """The three ways write_crops decodes (this thread; threads when the first block is slow; a fork pool) write
    the same chunks, and each is taken when its rule says so."""
    from concurrent import futures

    from experiments.data import crops

    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    samples = files.splits["train"]
    made = []
    real_pool = futures.ThreadPoolExecutor
    monkeypatch.setattr(crops, "ThreadPoolExecutor", lambda *a, **k: made.append(1) or real_pool(*a, **k))
    written = {}
    for way, min_seconds, min_per_process in [("alone", 1e9, 10**9), ("threads", 0.0, 10**9), ("processes", 0.0, 4)]:
        monkeypatch.setattr(crops, "THREADS_MIN_SECONDS", min_seconds)
        monkeypatch.setattr(crops, "MIN_PER_PROCESS", min_per_process)
        made.clear()
        got = crops.write_crops(samples, tmp_path / way, files.preprocess, workers=2, chunk_bytes=5 * 3 * 24 * 24)
        assert bool(made) == (way == "threads"), way
        written[way] = (TokenChunks(tmp_path / way, 24).gather(np.arange(len(samples))),
                        [(c.size, c.sha256, c.reason) for c in got])
    assert len(written["alone"][1]) == len(samples) and any(r for _, _, r in written["alone"][1])  # the broken file
    for way in ("threads", "processes"):
        assert np.array_equal(written[way][0], written["alone"][0]) and written[way][1] == written["alone"][1], way


def test_a_decoded_pack_is_written_alone_on_any_rank_of_a_training_job(tree, tmp_path, monkeypatch):
    """The local rank 0 of node 2 (global rank 8 of 16) writes its node's pack alone: the writer must neither wait
    for the other ranks' index files nor leave the merge to a global rank 0 on another node."""
    import threading

    from litdata.utilities import env

    monkeypatch.setattr(env._DistributedEnv, "detect", classmethod(lambda cls: cls(16, 8, 2)))
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    done = []
    writer = threading.Thread(target=lambda: done.append(write_pack(
        {"train": files.splits["train"]}, tmp_path / "pack", tree, files.layout.class_names,
        preprocess=files.preprocess, workers=1)), daemon=True)
    writer.start()
    writer.join(30)
    assert done, "the decoded pack's writer waits for co-writers that do not exist"
    assert TokenChunks(tmp_path / "pack" / "train", 24).bounds[-1] == len(files.splits["train"])
