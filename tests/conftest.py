"""Shared fixtures: tiny GenImage trees and composed Hydra configs (CPU, seconds)."""

from __future__ import annotations

import os

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image
from sklearn.metrics import roc_auc_score

# No test touches the network: a Hugging Face download that a test forgets to switch off fails at once, here and
# in the subprocesses the tests start (they inherit the environment).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

#: overrides of a tiny CNN training on a flat GenImage tree (32 px, ResNet-18, random weights)
TINY = [
    "data=genimage_tiny", "data.crop_size=32", "data.resize_size=null", "data.batch_size=8",
    "data.num_workers=0", "model.backbone.pretrained=false", "model.backbone.name=resnet18", "model.net.head_hidden=16",
]


def toy_image(rng: np.random.Generator, size: int, fake: bool) -> np.ndarray:
    """A smooth low-contrast random image with sensor-like noise; fakes carry a +-12 grey-level checkerboard,
    the period-2 trace that transposed-convolution up-sampling leaves (Odena et al., 2016)."""
    low = 0.35 + 0.3 * rng.random((max(size // 8, 1), max(size // 8, 1), 3))
    img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float64)
    img += rng.normal(0, 6, img.shape)
    if fake:
        i, j = np.indices((size, size))
        img += 12.0 * ((-1.0) ** (i + j))[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def toy_set(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.stack([toy_image(rng, size, bool(y)) for y in labels]).astype(np.float32) / 255.0
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).float()


def fit_auroc(net: torch.nn.Module, size: int = 32, steps: int = 40, lr: float = 3e-3) -> float:
    torch.manual_seed(0)
    x, y = toy_set(64, size, seed=1)
    xt, yt = toy_set(64, size, seed=2)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for step in range(steps):
        idx = torch.randperm(64)[:32]
        opt.zero_grad()
        loss_fn(net(x[idx]), y[idx]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return roc_auc_score(yt.numpy(), net(xt).numpy())


def make_genimage_tree(root: Path, generators=("gen_a", "gen_b"), n: int = 6, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for gen in generators:
        for split in ("train", "val"):
            for cls, fake in (("nature", False), ("ai", True)):
                folder = root / gen / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    Image.fromarray(toy_image(rng, size, fake)).save(folder / f"{cls}_{i:03d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def user_cache_in_a_temporary_folder(tmp_path_factory):
    """Caches that default to the user's ``$XDG_CACHE_HOME`` (downloaded run artifacts, data checks without a
    ``paths.cache_dir``) go to pytest's temporary folder, here and in the subprocesses the tests start."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def genimage_tree(tmp_path: Path) -> Path:
    return make_genimage_tree(tmp_path / "genimage")


def compose_config(overrides: list[str], tmp_path: Path, keep_pretrained: bool = False,
                   log_mlflow_model: bool = False) -> DictConfig:
    """Compose ``conf/config.yaml`` like ``run.py`` does, with outputs and MLflow under ``tmp_path``.

    Tests never download: pretrained weights are switched off unless ``keep_pretrained`` (config checks only).
    Training runs skip their MLflow model (``logger.log_mlflow_model``: a ``torch.export`` of the net, seconds per
    run) unless ``log_mlflow_model``; ``tests/training/test_logged_model.py`` tests it.
    """
    from experiments.training.builders import without_pretrained_weights

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    if not keep_pretrained:
        without_pretrained_weights(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "out")
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
        cfg.hydra.job.num = 0
        if cfg.get("logger") is not None and "log_mlflow_model" in cfg.logger:
            cfg.logger.log_mlflow_model = log_mlflow_model
    HydraConfig.instance().set_config(cfg)
    return cfg


def collect_batches(loader) -> dict:
    """Every batch of ``loader`` joined: ``image`` and ``index`` concatenated (empty batches left out), and the
    ``skipped`` files counted."""
    images, idx, skipped = [], [], 0
    for b in loader:
        skipped += int(b["skipped"])
        if not b.get("empty"):
            images.append(b["image"])
            idx.append(b["index"])
    return {"image": torch.cat(images), "index": torch.cat(idx), "skipped": skipped}


def small_datamodule(root: Path, **kw):
    """A set-up ``DetectorDataModule`` of a tiny tree: 24 px crops, batch 8, no workers, caches beside ``root``."""
    from experiments.data.datamodule import DetectorDataModule

    args = dict(name="t", root=str(root), crop_size=24, resize_size=None, batch_size=8, num_workers=0,
                val_fraction=0.25, split_seed=0, cache_dir=str(root.parent / "cache"))
    args.update(kw)
    dm = DetectorDataModule(**args)
    dm.setup()
    return dm


def assert_source_tags(client, run_id: str, overrides: list[str], user_tags: dict[str, str] | None = None) -> None:
    """The tags and files every run carries (experiments.tracking.create_run): the clean commit of this checkout,
    ``git_dirty`` as ``git status`` says, the command-line overrides (tag and ``overrides.yaml``), the user's tags,
    and the resolved config (params and ``config.yaml``)."""
    import subprocess

    import yaml

    run = client.get_run(run_id)
    tags = run.data.tags
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                            text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head and len(head) == 40, tags.get("mlflow.source.git.commit")
    assert tags["git_dirty"] == ("true" if status else "false")
    assert tags["overrides"].split(" ") == overrides
    for key, value in (user_tags or {}).items():
        assert tags[key] == value, key
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "overrides.yaml"} <= files, files
    logged = yaml.safe_load(Path(client.download_artifacts(run_id, "overrides.yaml")).read_text())
    assert logged == overrides
    assert "seed" in run.data.params
