"""The chronological protocol's split (experiments.data.chronology): windows from an order and k, the order
from a manifest's dates, and the datamodule's train / test generators."""

from __future__ import annotations

import pytest
from PIL import Image

from experiments.data.chronology import Chronology, ChronologyError, order_from_dates, later_windows
from experiments.data.layouts import Manifest
from tests.conftest import compose_config, make_genimage_tree

ORDER = ("a", "b", "c", "d", "e")


def test_windows_of_an_order_and_k():
    assert later_windows(ORDER, 1) == [["b"], ["c"], ["d"], ["e"]]
    assert later_windows(ORDER, 2, size=2) == [["c", "d"], ["e"]]
    assert later_windows(ORDER, 4, size=3) == [["e"]]
    chrono = Chronology(ORDER, 2)
    assert chrono.train == ["a", "b"] and chrono.later == ["c", "d", "e"] and chrono.horizon == "b"
    assert chrono.tags() == {"train_generator": "upto_b", "generator_order": "a,b,c,d,e", "chronological_k": "2"}
    for bad in (0, 5):
        with pytest.raises(ChronologyError, match="1 <= k <= 4"):
            Chronology(ORDER, bad)
    with pytest.raises(ChronologyError, match="twice"):
        Chronology(("a", "b", "a"), 1)
    with pytest.raises(ChronologyError, match="at least one generator"):
        later_windows(ORDER, 1, size=0)


def test_order_from_dates_takes_each_generators_earliest_image():
    dated = [("sdxl", "2023-07-26"), ("biggan", "2018-09"), ("sdxl", "2023-01-01"), ("dalle2", "2022"),
             ("biggan", ""), ("adm", "2021-05-11T10:00")]
    assert order_from_dates(dated) == ["biggan", "adm", "dalle2", "sdxl"]
    with pytest.raises(ChronologyError, match=r"\['mj'\] have no dated"):
        order_from_dates([("mj", ""), ("sdxl", "2023-07-26")])
    with pytest.raises(ChronologyError, match="not a date"):
        order_from_dates([("mj", "July 2022")])


def _manifest(root, dates: dict[str, str]):
    rows = ["path,label,generator,split,date"]
    for gen, date in dates.items():
        for split in ("train", "test"):
            for label in ("real", "fake"):
                for i in range(3):
                    path = root / gen / f"{split}_{label}_{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(path)
                    rows.append(f"{gen}/{path.name},{label},{gen},{split},{date if label == 'fake' else '1999-01-01'}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_manifest_dates_give_the_release_order_and_the_datamodule_split(tmp_path):
    from experiments.data.datamodule import DetectorDataModule

    root = _manifest(tmp_path / "m", {"sdxl": "2023-07-26", "biggan": "2018-09-28", "adm": "2021-05-11"})
    assert Manifest().release_order(root) == ["biggan", "adm", "sdxl"]
    dm = DetectorDataModule("m", root, Manifest(), train_first=2, crop_size=32, resize_size=None, val_fraction=0.34)
    assert dm.chronology.order == ("biggan", "adm", "sdxl") and dm.chronology.horizon == "adm"
    train, val, test = dm.layout.splits(dm.root, dm.selection)
    assert {s.generator for s in train + val} == {"biggan", "adm"} and {s.generator for s in test} == {"sdxl"}
    given = DetectorDataModule("m", root, Manifest(), generator_order=["sdxl", "adm", "biggan"], train_first=1)
    assert given.chronology.train == ["sdxl"]


def test_a_layout_without_dates_asks_for_the_order(tmp_path):
    from experiments.data.datamodule import DetectorDataModule
    from experiments.data.layouts import DatasetLayoutError

    root = make_genimage_tree(tmp_path / "g", n=2)
    with pytest.raises(DatasetLayoutError, match=r"data.generator_order=\[oldest"):
        DetectorDataModule("g", root, train_first=1)
    given = DetectorDataModule("g", root, generator_order=["gen_b", "gen_a"], train_first=1)
    assert given.chronology.later == ["gen_a"]


def test_preset_trains_on_the_first_k_of_the_demo_order(tmp_path):
    cfg = compose_config(["experiment=chronological", "chronological.k=2"], tmp_path)
    assert list(cfg.data.generator_order) == ["deconv", "nearest_conv", "bilinear_conv"]
    assert cfg.data.train_first == 2 and cfg.logger.tags.protocol == "chronological"
    assert cfg.logger.experiment_name == "chronological-demo"
    assert cfg.hydra.sweeper.params["chronological.k"] == "1,2"
    task = compose_config(["task=cross_generator", "experiment=chronological", "chronological.window=2"], tmp_path)
    assert task.task.protocol == "chronological" and task.task.window == 2
    assert compose_config(["task=cross_generator"], tmp_path).task.window == 1


@pytest.mark.slow  # a whole training run (about 10 s alone, more on a busy machine)
def test_a_chronological_training_run_is_tagged_with_its_horizon_and_order(tmp_path):
    import mlflow

    from experiments.tasks.train import train

    root = make_genimage_tree(tmp_path / "g", generators=("gen_a", "gen_b", "gen_c"), n=4)
    cfg = compose_config(["experiment=chronological", "data=genimage_tiny", f"data.root={root}", "data.crop_size=32",
                          "data.resize_size=null", "data.num_workers=0", "diagnostics=false",
                          "data.generator_order=[gen_c,gen_a,gen_b]", "chronological.k=2",
                          "model=radial_angular_logreg", "model.estimator.features.n_radial=8",
                          "model.estimator.features.n_angular=8"], tmp_path)
    train(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("chronological-genimage_tiny").experiment_id])
    assert {k: run.data.tags[k] for k in ("protocol", "train_generator", "generator_order", "chronological_k")} == {
        "protocol": "chronological", "train_generator": "upto_gen_a", "generator_order": "gen_c,gen_a,gen_b",
        "chronological_k": "2"}
    assert {k.split("/")[1] for k in run.data.metrics if k.startswith("test/gen_")} == {"gen_b"}
