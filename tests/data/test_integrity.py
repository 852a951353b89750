"""Dataset manifests: parallel hashing, and a tree verified against its manifest (missing, changed, extra,
all equal), alone and through ``task=check_data data.verify=...``."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from hydra.utils import get_method

from experiments.data import integrity
from experiments.data.integrity import ManifestMismatch, build_manifest, read_manifest, verify, write_manifest
from tests.conftest import compose_config, make_genimage_tree, small_datamodule as _dm


def _entries(root):
    return build_manifest(_dm(root).splits, workers=2)


def test_manifest_rows_hash_every_file_in_parallel_as_one_process_does(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=10, size=32)
    splits = _dm(root).splits
    one, many = build_manifest(splits, workers=1), build_manifest(splits, workers=2)
    assert one == many and len(one) == sum(len(v) for v in splits.values()) > integrity.HASH_BATCH
    row = one[0]
    data = (root / row.relpath).read_bytes()
    assert (row.size, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_manifest(write_manifest(one, tmp_path / "m.csv")) == one


def test_verify_lists_missing_changed_and_extra_files(tmp_path):
    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    manifest = write_manifest(_entries(root), tmp_path / "manifest.csv")
    assert verify(_entries(root), manifest).ok  # all equal
    (root / "gen_a" / "train" / "ai" / "ai_000.png").unlink()
    changed = root / "gen_b" / "val" / "nature" / "nature_001.png"
    changed.write_bytes(changed.read_bytes()[:-10])
    shutil.copy(root / "gen_a" / "val" / "ai" / "ai_002.png", root / "gen_a" / "val" / "ai" / "ai_009.png")
    same_size = root / "gen_b" / "train" / "ai" / "ai_003.png"
    data = bytearray(same_size.read_bytes())
    data[-20] ^= 1
    same_size.write_bytes(bytes(data))
    with pytest.raises(ManifestMismatch) as err:
        verify(_entries(root), manifest)
    text = str(err.value)
    assert "1 missing, 2 changed (size or sha256), 1 extra" in text
    assert "missing: gen_a/train/ai/ai_000.png" in text and "extra: gen_a/val/ai/ai_009.png" in text
    assert "changed: gen_b/train/ai/ai_003.png" in text and "changed: gen_b/val/nature/nature_001.png" in text


def test_a_missing_manifest_is_named(tmp_path):
    with pytest.raises(ManifestMismatch, match=r"nope.csv: no such manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_check_data_writes_a_manifest_and_verifies_against_one(tmp_path, capsys):
    root = make_genimage_tree(tmp_path / "g", n=4, size=32)
    args = ["task=check_data", "data=genimage_tiny", f"data.root={root}", "data.crop_size=24",
            "data.resize_size=null", "data.num_workers=0"]
    cfg = compose_config(args, tmp_path / "first")
    get_method(cfg.task.fn)(cfg)
    manifest = tmp_path / "first" / "out" / "manifest.csv"
    assert len(read_manifest(manifest)) == 32
    cfg = compose_config([*args, f"data.verify={manifest}"], tmp_path / "again")
    get_method(cfg.task.fn)(cfg)
    assert "all 32 files match" in capsys.readouterr().out
    (root / "gen_b" / "val" / "ai" / "ai_000.png").unlink()
    cfg = compose_config([*args, f"data.verify={manifest}"], tmp_path / "third")
    with pytest.raises(ManifestMismatch, match="1 missing"):
        get_method(cfg.task.fn)(cfg)
