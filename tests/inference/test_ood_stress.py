"""task=ood_stress on two tiny trained detectors (a CNN and the scikit-learn pipeline), MLflow in a tmp dir."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import mlflow
import pytest
import torch
from omegaconf import open_dict

from experiments.inference.loading import LoadedDetector
from experiments.runs import NoRunsFound
from experiments.tasks.ood_stress import as_ref_list, ood_grid, ood_stress
from experiments.data.images import load_rgb
from experiments.data.perturbations import apply, metric_prefix, perturb_image, perturbation_order
from experiments.training.builders import build_datamodule
from features.precision import as_unit_float
from experiments.tasks.train import train
from tests.conftest import assert_source_tags, compose_config, make_genimage_tree

# one batch holds the whole test split (2 generators x 2 classes x 6 images), so the fast_dev_run
# training evaluates the full test split and its test/auc is comparable with the OOD clean point
DATA = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=64",
        "data.num_workers=0", "diagnostics=false"]
CNN = ["model=resnet34_localfft", "model.backbone.name=resnet18", "model.net.head_hidden=16", "debug=fdr"]
SKLEARN = ["model=radial_angular_logreg", "model.estimator.features.n_radial=8", "model.estimator.features.n_angular=8"]
MODELS = ("resnet34_localfft", "radial_angular_logreg")


def _uri(root) -> str:
    return f"sqlite:///{root / 'mlruns.db'}"


@pytest.fixture(scope="module")
def stressed(tmp_path_factory):
    """Train both tiny detectors, then run task=ood_stress (ood=quick, ckpt=null) once."""
    root = tmp_path_factory.mktemp("ood_stress")
    tree = make_genimage_tree(root / "genimage", n=6, size=32)
    for name, overrides in zip(MODELS, (CNN, SKLEARN)):
        cfg = compose_config(DATA + overrides + [f"data.root={tree}"], root)
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / f"out_{name}")
        train(cfg)
    overrides = DATA + ["task=ood_stress", "ood=quick", f"data.root={tree}", "+logger.tags.note=stress"]
    cfg = compose_config(overrides, root)
    result = ood_stress(cfg)
    client = mlflow.MlflowClient(tracking_uri=_uri(root))
    return {"root": root, "tree": tree, "cfg": cfg, "result": result, "client": client, "overrides": overrides}


def _train_runs(client):
    exp = client.get_experiment_by_name("detectors-genimage_tiny")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.task = 'train'")
    return {r.data.tags["model"]: r for r in runs}


def test_writes_curves_and_table(stressed):
    out = stressed["root"] / "reports" / "ood_stress"
    names = {"noise", "jpeg", "blur", "downscale", "jpeg_blur"}
    assert {p.name for p in stressed["result"]["curves"]} == {f"robustness_{n}.png" for n in names}
    for name in names:
        assert (out / f"robustness_{name}.png").stat().st_size > 1000
    grid = ood_grid(stressed["cfg"].ood)
    header = (out / "ood_auroc.csv").read_text().splitlines()[0].split(",")
    assert header == ["detector", *(p.key for p in grid)]
    rows = (out / "ood_auroc.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(MODELS)
    md = (out / "ood_auroc.md").read_text()
    assert "| detector | noise/s0 | noise/s10 |" in md and "jpeg_blur/q50_s2" in md


def test_logs_ood_metrics_per_detector(stressed):
    client, result = stressed["client"], stressed["result"]
    train_runs = _train_runs(client)
    grid = ood_grid(stressed["cfg"].ood)
    assert set(result["run_ids"]) == set(MODELS)
    for label, run_id in result["run_ids"].items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["task"] == "ood_stress"
        assert run.data.tags["evaluated_run"] == train_runs[label].info.run_id
        # not the training one, but named after it
        assert client.get_experiment(run.info.experiment_id).name == "ood_stress-detectors-genimage_tiny"
        assert_source_tags(client, run_id, stressed["overrides"], {"note": "stress"})
        for p in grid:
            for metric in ("auc", "ap", "accuracy"):
                key = f"{metric_prefix(p)}/{metric}"
                assert 0.0 <= run.data.metrics[key] <= 1.0, key
                assert run.data.metrics[key] == pytest.approx(result["results"][label][p.key][metric])
        assert (run.data.params["stress/views"], run.data.params["stress/pooling"]) == ("auto", "mean")
        assert run.data.params["stress/views_used"].startswith("auto: grid:4")  # both are spectral detectors
        artifacts = {a.path for a in client.list_artifacts(run_id, "ood_stress")}
        assert "ood_stress/ood_auroc.csv" in artifacts and "ood_stress/robustness_noise.png" in artifacts


def test_clean_strength_equals_plain_test_auroc(stressed):
    train_runs = _train_runs(stressed["client"])
    for label in MODELS:
        plain = train_runs[label].data.metrics["test/auc"]
        res = stressed["result"]["results"][label]
        assert res["noise/s0"]["n"] == 24
        for clean in ("noise/s0", "blur/s0", "downscale/x1"):
            assert res[clean]["auc"] == pytest.approx(plain, abs=1e-6), (label, clean)


def spy_on_detector_inputs(monkeypatch) -> dict[str, list[torch.Tensor]]:
    """Record every batch each detector scores, by model name."""
    seen: dict[str, list[torch.Tensor]] = defaultdict(list)
    original = LoadedDetector.predict_proba

    def spy(self, images):
        seen[self.cfg.model.name].append(images.clone())
        return original(self, images)

    monkeypatch.setattr(LoadedDetector, "predict_proba", spy)
    return seen


def test_every_detector_sees_the_same_perturbed_pixels(stressed, tmp_path, monkeypatch):
    """With ``ood.order=after_preprocessing``, spy on the detectors' input: both get the same tensors, and those
    are ``apply(clean, p, seed, ids)`` of the preprocessed batch."""
    seen = spy_on_detector_inputs(monkeypatch)
    ids = [stressed["result"]["detectors"][m] for m in MODELS]
    cfg = compose_config(DATA + ["task=ood_stress", "ood=noise", "ood.perturbations.noise.strengths=[0,10]",
                                 "ood.order=after_preprocessing",
                                 f"data.root={stressed['tree']}", f"ckpt=[{ids[0]},{ids[1]}]",
                                 f"paths.report_dir={tmp_path / 'reports'}"], stressed["root"])
    result = ood_stress(cfg)
    assert set(result["results"]) == set(MODELS)

    def digest(x):
        return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()

    first, second = ([digest(x) for x in seen[m]] for m in MODELS)
    assert first == second and len(first) == 2  # one batch x two strengths, same pixels for both detectors
    clean, noisy = seen[MODELS[0]]
    assert not torch.equal(clean, noisy)
    grid = ood_grid(cfg.ood)
    expected = apply(clean, grid[1], cfg.seed, sample_ids=torch.arange(clean.shape[0]))
    assert torch.equal(noisy, expected)


def test_default_order_perturbs_the_file_before_preprocessing(stressed, tmp_path, monkeypatch):
    """The default (deployment) order: each detector gets preprocess(perturb_image(file)), the same for both."""
    seen = spy_on_detector_inputs(monkeypatch)
    ids = [stressed["result"]["detectors"][m] for m in MODELS]
    cfg = compose_config(DATA + ["task=ood_stress", "ood=noise", "ood.perturbations.noise.strengths=[0,10]",
                                 f"data.root={stressed['tree']}", f"ckpt=[{ids[0]},{ids[1]}]",
                                 f"paths.report_dir={tmp_path / 'reports'}"], stressed["root"])
    assert perturbation_order(cfg.ood.order) == "before_preprocessing"
    ood_stress(cfg)
    first, second = seen[MODELS[0]], seen[MODELS[1]]
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, second))
    clean, noisy = first
    dm = build_datamodule(cfg)
    dm.setup()
    noise = ood_grid(cfg.ood)[1]
    samples = dm.datasets["test"].samples
    expected = torch.stack([dm.preprocess(perturb_image(load_rgb(s.path), noise, cfg.seed, i))
                            for i, s in enumerate(samples)])
    assert torch.equal(noisy, as_unit_float(expected))
    assert not torch.equal(noisy, apply(clean, noise, cfg.seed, sample_ids=torch.arange(clean.shape[0])))


@pytest.mark.parametrize("order", ["before_preprocessing", "after_preprocessing"])
def test_views_are_scored_in_both_orders_and_recorded(stressed, tmp_path, monkeypatch, order):
    """eval.views=grid:2 on 64 px images (32 px crops): every test image reaches the detectors as 4 crops, in one
    batch per grid point, and the runs record the views and the pooling."""
    seen = spy_on_detector_inputs(monkeypatch)
    big = make_genimage_tree(tmp_path / "big", n=2, size=64, seed=3)
    ids = [stressed["result"]["detectors"][m] for m in MODELS]
    cfg = compose_config(DATA + ["task=ood_stress", "ood=noise", "ood.perturbations.noise.strengths=[0,10]",
                                 f"ood.order={order}", "eval.views=grid:2", "eval.pooling=max",
                                 f"data.root={big}", f"ckpt=[{ids[0]},{ids[1]}]",
                                 f"paths.report_dir={tmp_path / 'reports'}"], stressed["root"])
    result = ood_stress(cfg)
    n_test = result["results"][MODELS[0]]["noise/s0"]["n"]
    assert n_test > 0 and [len(x) for x in seen[MODELS[0]]] == [4 * n_test] * 2
    params = stressed["client"].get_run(result["run_ids"][MODELS[1]]).data.params
    assert (params["stress/views"], params["stress/pooling"]) == ("grid:2", "max")


def test_missing_runs_outside_demo_raise_with_a_command(stressed):
    cfg = compose_config(DATA + ["task=ood_stress", f"data.root={stressed['tree']}",
                                 "logger.experiment_name=no-runs-here"], stressed["root"])
    with pytest.raises(LookupError, match="python run.py -m data=genimage_tiny"):
        ood_stress(cfg)


def test_missing_demo_runs_name_the_training_command_and_ckpt_lists(tmp_path):
    cfg = compose_config(["task=ood_stress", "task.models=[resnet34_localfft,radial_angular_logreg]"], tmp_path)
    with pytest.raises(NoRunsFound) as raised:
        ood_stress(cfg)
    assert "python run.py -m experiment=demo model=resnet34_localfft,radial_angular_logreg" in str(raised.value)
    assert "'detectors-demo'" in str(raised.value)
    assert "train_if_missing" not in cfg.task
    assert as_ref_list(None) == [] and as_ref_list("a, b") == ["a", "b"] and as_ref_list(["x"]) == ["x"]


def test_laundering_logs_chain_level_metrics_and_the_severity_table(stressed, tmp_path):
    """ood=laundering on 40 px copies of the test split (the detector crops 32 px): every chain and level logs
    ood/<chain>/<level>/{auc,tpr_at_op,fpr_at_op}; the half-area crop (28 px) and the screenshot (30 px) fall
    below the crop and are upscaled back (ood.too_small=upscale), the 90 % crop (38 px) is not."""
    tree = make_genimage_tree(tmp_path / "genimage40", n=3, size=40)  # 12 test images keep it short
    ref = stressed["result"]["detectors"][MODELS[1]]  # the scikit-learn detector: the cheaper of the two
    cfg = compose_config(DATA + ["task=ood_stress", "ood=laundering", f"data.root={tree}", f"ckpt={ref}",
                                 f"paths.report_dir={tmp_path / 'reports'}"], stressed["root"])
    result = ood_stress(cfg)
    grid = ood_grid(cfg.ood)
    client = stressed["client"]
    for label, run_id in result["run_ids"].items():
        metrics = client.get_run(run_id).data.metrics
        res = result["results"][label]
        for p in grid:
            for metric in ("auc", "tpr_at_op", "fpr_at_op"):
                key = f"ood/{p.name}/{p.label}/{metric}"
                assert 0.0 <= metrics[key] <= 1.0, key
                assert metrics[key] == pytest.approx(res[p.key][metric])
        assert res["crop/a50"]["upscaled"] == res["screenshot/x0.8_a90"]["upscaled"] == 12
        assert res["crop/a90"]["upscaled"] == 0 and all(res[p.key]["skipped"] == 0 for p in grid)
        assert res["greyscale/clean"]["auc"] == pytest.approx(res["crop/clean"]["auc"])
    out = tmp_path / "reports" / "ood_stress"
    chains = ("reshare", "double_reshare", "webp", "screenshot", "crop", "greyscale")
    assert {p.name for p in result["curves"]} >= {f"severity_{c}.png" for c in chains}
    md = (out / "laundering_severity.md").read_text()
    assert all(f"## {c}" in md for c in chains) and "| detector | clean | l2048_q85 | l1080_q85 |" in md
    assert (out / "laundering_severity.csv").read_text().count("\n") == 1 + len(grid)


def test_laundered_images_below_the_crop_are_counted_and_skipped(stressed, tmp_path):
    """With ood.too_small=skip, the half-area crop of the 32 px test images (23 px) leaves no image: its metrics
    are NaN (so not logged) and all 24 are counted as skipped; the clean level is scored as usual."""
    ids = [stressed["result"]["detectors"][m] for m in MODELS]
    drop = [f"~ood.perturbations.{c}" for c in ("reshare", "double_reshare", "webp", "screenshot", "greyscale")]
    cfg = compose_config(DATA + ["task=ood_stress", "ood=laundering", "ood.too_small=skip", *drop,
                                 "ood.perturbations.crop.strengths=[clean,0.5]", f"data.root={stressed['tree']}",
                                 f"ckpt=[{ids[0]}]", f"paths.report_dir={tmp_path / 'reports'}"], stressed["root"])
    result = ood_stress(cfg)
    res = result["results"][MODELS[0]]
    assert res["crop/a50"]["skipped"] == 24 and res["crop/a50"]["n"] == 0
    assert res["crop/clean"]["n"] == 24 and res["crop/clean"]["skipped"] == 0
    metrics = stressed["client"].get_run(result["run_ids"][MODELS[0]]).data.metrics
    assert "ood/crop/a50/auc" not in metrics and "ood/crop/clean/auc" in metrics
