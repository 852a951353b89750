"""``task=pack`` through the composed config: the pack it writes reads back with ``data=packed``; a missing
``pack.out`` is named."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from experiments.data.layouts import DatasetLayoutError
from experiments.data.packed import PackedDataModule
from tests.conftest import compose_config
from tests.data.test_shards import _all, tree  # noqa: F401  (a fixture)


def test_pack_task_end_to_end_and_missing_out(tree, tmp_path):  # noqa: F811
    from experiments.tasks.pack import pack

    common = ["task=pack", "data=genimage_tiny", f"data.root={tree}", "data.crop_size=24", "data.resize_size=null",
              "data.val_fraction=0.25"]
    cfg = compose_config([*common, f"pack.out={tmp_path / 'pack'}", "pack.workers=1"], tmp_path)
    info = pack(cfg)
    assert sum(info.counts.values()) == 50 and info.counts["test"] == 25 and info.n_bad == 2
    assert (tmp_path / "pack" / "manifest.csv").is_file()
    read = compose_config(["data=packed", f"data.root={tmp_path / 'pack'}", "data.crop_size=24",
                           "data.resize_size=null", "data.num_workers=0"], tmp_path)
    dm = instantiate(read.data)
    assert isinstance(dm, PackedDataModule)
    dm.setup()
    assert len(_all(dm.test_dataloader())["image"]) == 24
    with pytest.raises(DatasetLayoutError, match=r"pack.out=.*pack exists and is not empty"):
        pack(cfg)
    with pytest.raises(DatasetLayoutError, match=r"pack.out is not set"):
        pack(compose_config(common, tmp_path))
