"""Hyperparameter search: per-model search spaces, and real sweeps through ``run.py -m`` (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, compose_config, make_genimage_tree

REPO = Path(__file__).resolve().parents[2]
SPACE_DIR = Path(CONF_DIR) / "hparams_search" / "space"
SHARED_SPACES = {"cnn"}


def has_optuna() -> bool:
    """Optuna 3 or later and optuna-integration, as the `search` extra installs them."""
    try:
        import optuna
        import optuna_integration  # noqa: F401
    except ImportError:
        return False
    return int(optuna.__version__.split(".")[0]) >= 3


HAS_OPTUNA = has_optuna()
needs_optuna = pytest.mark.skipif(not HAS_OPTUNA, reason="needs optuna>=3 and optuna-integration "
                                                         "(pip install -e '.[search]')")
ABSENT = object()


def sweep_params(cfg) -> dict[str, str]:
    return dict(cfg.hydra.sweeper.get("params") or {})


def test_grid_space_follows_the_model(tmp_path):
    shared = {"model.optimizer.lr", "model.optimizer.weight_decay", "model.net.dropout"}
    cfg = compose_config(["hparams_search=grid"], tmp_path)
    assert set(sweep_params(cfg)) == shared | {"model.net.patch_size"}
    assert cfg.hydra.mode == RunMode.MULTIRUN and cfg.logger.tags.search == "grid"
    cfg = compose_config(["hparams_search=grid", "model=spectraforge_dual"], tmp_path)
    assert set(sweep_params(cfg)) == shared | {"model.net.blur_sigma"}


@pytest.mark.parametrize("model", ["resnet34_localfft", "spectraforge_dual", "fft_random_forest"])
def test_plain_runs_and_multiruns_get_no_search_space(model, tmp_path):
    cfg = compose_config([f"model={model}"], tmp_path)
    assert sweep_params(cfg) == {} and "search" not in cfg.logger.tags


@pytest.mark.parametrize("space", sorted(p.stem for p in SPACE_DIR.glob("*.yaml")))
def test_every_space_key_exists_in_its_model_and_is_a_sweep(space, tmp_path):
    """Each ``<model>_<search>.yaml`` names keys of that model's config, with values Hydra parses as sweeps."""
    model, search = space.rsplit("_", 1)
    if model in SHARED_SPACES:
        model = "resnet34_localfft"
    # the basic sweeper is enough to compose any space; the Optuna plugin is not needed for this check
    choose_space = f"hparams_search/space@hydra.sweeper.params={space}"
    cfg = compose_config([f"model={model}", "hparams_search=grid", choose_space], tmp_path)
    params = sweep_params(cfg)
    own = set(yaml.safe_load((SPACE_DIR / f"{space}.yaml").read_text())) - {"defaults"}
    assert params and own <= set(params)
    parser = OverridesParser.create()
    for key, value in params.items():
        assert OmegaConf.select(cfg, key, default=ABSENT) is not ABSENT, f"{space}: {key} is not in model={model}"
        override = parser.parse_override(f"{key}={value}")
        assert override.is_sweep_override(), f"{space}: {key}={value} is not a sweep"
        if search == "grid":
            assert override.is_discrete_sweep(), f"{space}: the basic sweeper needs a list or choice, got {value}"


def test_optuna_search_composes(tmp_path):
    """The search composes without Optuna installed: the study in the project root, a pruning callback per job."""
    cfg = compose_config(["hparams_search=optuna", "model=spectraforge_dual"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("suite_optuna_sweeper.optuna_sweeper.OptunaStudySweeper")
    assert sweeper.direction == "maximize" and sweeper.study_name == "spectraforge_dual-demo"
    assert sweeper.storage == f"sqlite:///{cfg.paths.root_dir}/optuna.db"
    assert cfg.optimized_metric == "val/auc" and cfg.logger.tags.search == "optuna"
    assert "model.net.blur_sigma" in sweep_params(cfg) and sweeper.sampler.seed == cfg.seed
    pruning = cfg.callbacks.optuna_pruning
    assert pruning.monitor == "val/auc" and pruning.trial_number is None and pruning.storage == sweeper.storage
    assert pruning.pruner._target_ == sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert compose_config(["hparams_search=optuna", "monitor_mode=min"], tmp_path).hydra.sweeper.direction == "minimize"


# ---------------------------------------------------------------- end to end, on CPU

TINY = ["data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8",
        "data.num_workers=0", "data.persistent_workers=false", "model.backbone.pretrained=false",
        "model.backbone.name=resnet10t",
        "model.net.head_hidden=16", "debug=cpu", "trainer.max_epochs=1", "diagnostics=false",
        "callbacks.progress_bar=null"]


def run_sweep(search: str, overrides: list[str], root: Path) -> float:
    tree = root / "genimage"
    if not tree.is_dir():
        make_genimage_tree(tree, n=6, size=32)
    cmd = [sys.executable, "run.py", "-m", f"hparams_search={search}", f"data.root={tree}", *TINY, *overrides]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "SUITE_ROOT": str(root)}, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return time.perf_counter() - start


def search_runs(root: Path, search: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns.db'}")
    exp = client.get_experiment_by_name("detectors-genimage_tiny")
    # the trials, not the sweep's parent run (task=sweep), which carries the preset's tags too
    return client.search_runs([exp.experiment_id], filter_string=f"tags.search = '{search}' and tags.task = 'train'")


@pytest.mark.slow
@needs_optuna
def test_optuna_sweep_logs_every_trial_to_mlflow(tmp_path):
    seconds = run_sweep("optuna", ["hydra.sweeper.n_trials=2", "model.net.patch_size=choice(8,16)"], tmp_path)
    runs = search_runs(tmp_path, "optuna")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.runName"] for r in runs} == {"resnet34_localfft-seed42-trial0",
                                                            "resnet34_localfft-seed42-trial1"}
    best = max(r.data.metrics["best_val/auc"] for r in runs)
    results = list((tmp_path / "logs").rglob("optimization_results.yaml"))
    assert len(results) == 1
    assert yaml.safe_load(results[0].read_text())["best_value"] == pytest.approx(best)
    print(f"2-trial optuna sweep: {seconds:.1f} s")


def study_trials(root: Path, name: str = "resnet34_localfft-genimage_tiny"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}").trials


ALWAYS_PRUNE = ["~hydra.sweeper.pruner", "+hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:2.0}"]


@pytest.mark.slow
@needs_optuna
def test_optuna_study_persists_resumes_and_prunes(tmp_path):
    """Three trials into the SQLite study; the same command again adds two more to the same study (five), and a
    pruner that prunes every trial (val/auc is never above 2) gets them recorded PRUNED after their first epoch."""
    import optuna

    space = ["trainer.max_epochs=2", "model.net.patch_size=choice(8,16)"]
    first = run_sweep("optuna", ["hydra.sweeper.n_trials=3", *space], tmp_path)
    trials = study_trials(tmp_path)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(sorted(t.intermediate_values) == [0, 1] for t in trials)  # reported by each job, per epoch
    assert all(t.params["model.net.patch_size"] in (8, 16) for t in trials)
    second = run_sweep("optuna", ["hydra.sweeper.n_trials=2", *space, *ALWAYS_PRUNE], tmp_path)
    trials = study_trials(tmp_path)
    assert len(trials) == 5 and [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.state for t in trials[3:]] == [optuna.trial.TrialState.PRUNED] * 2
    assert all(sorted(t.intermediate_values) == [0] for t in trials[3:])
    runs = {r.data.tags["mlflow.runName"]: r for r in search_runs(tmp_path, "optuna")}
    assert sorted(runs) == [f"resnet34_localfft-seed42-trial{n}" for n in range(5)]
    assert runs["resnet34_localfft-seed42-trial4"].data.tags["pruned"] == "0"
    results = sorted((tmp_path / "logs").rglob("optimization_results.yaml"))
    assert len(results) == 2
    summary = yaml.safe_load(results[-1].read_text())
    assert summary["trials"] == {"COMPLETE": 3, "PRUNED": 2}
    assert summary["best_value"] == pytest.approx(max(t.value for t in trials[:3]))
    print(f"3-trial optuna study: {first:.1f} s, resumed with 2 pruned trials: {second:.1f} s")


@pytest.mark.slow
def test_grid_sweep_logs_every_run_to_mlflow(tmp_path):
    fixed = ["model.optimizer.lr=1e-3", "model.optimizer.weight_decay=1e-2", "model.net.dropout=0.5"]
    seconds = run_sweep("grid", [*fixed, "model.net.patch_size=8,16"], tmp_path)
    runs = search_runs(tmp_path, "grid")
    assert sorted(r.data.params["model/net/patch_size"] for r in runs) == ["16", "8"]
    assert all("best_val/auc" in r.data.metrics for r in runs)
    print(f"2-run grid sweep: {seconds:.1f} s")
