"""``data=packed`` (:class:`PackedDataModule`): clear errors on what is not a pack, the pack's own data gate,
and training from a pack whose files are gone."""

from __future__ import annotations

import shutil

import pytest

from experiments.data.audit import BadDataError
from experiments.data.layouts import DatasetLayoutError
from experiments.data.shards import NotAPackError, write_pack
from tests.conftest import compose_config, small_datamodule as _dm
from tests.data.test_shards import _packed, tree  # noqa: F401  (a fixture)


def test_packed_on_a_folder_that_is_not_a_pack_names_it(tree, tmp_path):  # noqa: F811
    with pytest.raises(NotAPackError, match=r"g is not a packed dataset.*task=pack"):
        _packed(tree, tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"nowhere does not exist.*task=pack"):
        _packed(tmp_path / "nowhere", tmp_path)


def test_the_data_gate_reads_the_unusable_files_of_the_pack(tree, tmp_path):  # noqa: F811
    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    write_pack(files.splits, tmp_path / "pack", tree, files.layout.class_names, workers=1)
    _packed(tmp_path / "pack", tmp_path, max_bad_fraction=0.05).check_unusable()  # 2 of 50
    with pytest.raises(BadDataError, match=r"(?s)2 of 50 images .* cannot be used.*gen_a/val/ai/empty.png"):
        _packed(tmp_path / "pack", tmp_path, max_bad_fraction=0.01).check_unusable()


@pytest.mark.slow
def test_train_task_on_a_pack_whose_files_are_gone(tree, tmp_path):  # noqa: F811
    from experiments.tasks.train import train

    files = _dm(tree, cache_dir=str(tmp_path / "x"))
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    (copy / "gen_a" / "val" / "ai" / "empty.png").unlink()
    (copy / "gen_b" / "train" / "nature" / "broken.png").unlink()
    moved = _dm(copy, cache_dir=str(tmp_path / "x"))
    write_pack(moved.splits, tmp_path / "pack", copy, files.layout.class_names, workers=1)
    shutil.rmtree(copy)  # only the pack is left
    cfg = compose_config(["data=packed", f"data.root={tmp_path / 'pack'}", "data.crop_size=24",
                          "data.resize_size=null", "data.num_workers=0", "model=radial_angular_logreg",
                          "diagnostics=false"], tmp_path)
    assert train(cfg) is not None
