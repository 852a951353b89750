"""Pretrained weights: the hub cache, a local file, the offline error, the early check; no network anywhere."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from detectors.backbones import PretrainedWeightsUnavailable, create_backbone, ensure_weights, weights_source
from experiments.training.builders import check_pretrained_weights, without_pretrained_weights
from tests.conftest import compose_config

TINY = "resnet10t"  # timm's default tag: resnet10t.c3_in1k, hub id timm/resnet10t.c3_in1k


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache under tmp_path, offline (HF_HUB_OFFLINE=1): nothing can be downloaded."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


def put_in_cache(hub_cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` as ``model.safetensors`` of ``repo_id`` in the Hugging Face cache layout."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_weights_source_names_the_tag_and_hub_id():
    assert weights_source("resnet34") == ("resnet34.a1_in1k", "timm/resnet34.a1_in1k", weights_source("resnet34")[2])
    assert weights_source("resnet34.tv_in1k")[:2] == ("resnet34.tv_in1k", "timm/resnet34.tv_in1k")
    assert weights_source("resnet50.tv_in1k")[1] == "timm/resnet50.tv_in1k"


def test_offline_without_cache_stops_with_the_exact_weights_and_both_keys(offline_hub):
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        create_backbone("resnet34.tv_in1k", pretrained=True)
    message = str(err.value)
    for expected in ("resnet34.tv_in1k", "timm/resnet34.tv_in1k", "model.backbone.weights_path=",
                     "model.backbone.pretrained=false", "HF_HOME"):
        assert expected in message


def test_offline_reads_the_hub_cache(offline_hub):
    reference = timm.create_model(TINY, pretrained=False, num_classes=0)
    torch.nn.init.constant_(reference.conv1[0].weight, 0.25)
    put_in_cache(offline_hub, weights_source(TINY)[1], reference.state_dict())
    model = create_backbone(TINY, pretrained=True)
    assert torch.equal(model.conv1[0].weight, reference.conv1[0].weight)


def test_weights_path_loads_a_local_state_dict(tmp_path, offline_hub):
    reference = timm.create_model(TINY, pretrained=False, num_classes=0)
    torch.nn.init.constant_(reference.conv1[0].weight, 0.5)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = create_backbone(TINY, pretrained=True, weights_path=str(path))
    assert torch.equal(model.conv1[0].weight, reference.conv1[0].weight)
    with pytest.raises(PretrainedWeightsUnavailable, match="no such file"):
        create_backbone(TINY, weights_path=str(tmp_path / "missing.pth"))


def test_freezing_a_random_backbone_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="detectors.backbones"):
        create_backbone(TINY, pretrained=False, freeze_stages=1)
    assert "randomly initialised" in caplog.text and "model.backbone.pretrained=true" in caplog.text


def test_paper_models_are_pretrained_and_the_demo_never_downloads(tmp_path):
    for model in ("resnet34_localfft", "spectraforge_dual", "efficientnet_spatial", "resnet50_fft"):
        assert compose_config([f"model={model}"], tmp_path, keep_pretrained=True).model.backbone.pretrained is True
        demo = compose_config([f"model={model}", "experiment=demo"], tmp_path, keep_pretrained=True)
        assert demo.model.backbone.pretrained is False
    demo = compose_config(["model=clip_probe", "experiment=demo"], tmp_path, keep_pretrained=True)
    assert demo.model.estimator.features.pretrained is None and check_pretrained_weights(demo.model) == []


def test_the_check_before_training_fails_offline_and_passes_without_weights(tmp_path, offline_hub):
    cfg = compose_config(["model=resnet34_localfft"], tmp_path, keep_pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailable, match="resnet34.a1_in1k"):
        check_pretrained_weights(cfg.model)
    assert check_pretrained_weights(without_pretrained_weights(cfg).model) == []
    assert ensure_weights(TINY) is None


class RecordingFactory:
    """A factory with its own weights check, as ``create_backbone`` and ``CLIPImageFeatures`` have."""

    calls: list[dict] = []
    without_weights = {"pretrained": False, "weights_path": None}

    @staticmethod
    def ensure_weights(**keys) -> Path | None:
        RecordingFactory.calls.append(keys)
        return Path(keys["weights_path"]) if keys.get("weights_path") else None


def test_each_factory_node_is_checked_by_its_own_target_and_switched_off_by_its_own_keys():
    from omegaconf import OmegaConf

    RecordingFactory.calls.clear()
    target = f"{__name__}.RecordingFactory"
    model = OmegaConf.create({
        "net": {"_target_": "torch.nn.Identity", "backbone": "${backbone}"},  # a wired copy is visited once
        "backbone": {"_target_": target, "pretrained": True, "weights_path": "/w.safetensors"},
        "clip": {"_target_": "detectors.clip_probe.CLIPImageFeatures", "pretrained": None, "weights_path": None},
    })
    assert check_pretrained_weights(model) == [Path("/w.safetensors")]
    assert RecordingFactory.calls == [{"pretrained": True, "weights_path": "/w.safetensors"}]
    without_pretrained_weights(model)
    assert (model.backbone.pretrained, model.backbone.weights_path) == (False, None)
    assert model.net.backbone.pretrained is False


def test_a_kind_built_without_pretrained_weights_loads_without_a_download(tmp_path, offline_hub):
    from experiments.training.builders import build_kind

    cfg = compose_config(["model=resnet34_localfft", "model.net.head_hidden=8"], tmp_path, keep_pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailable):
        check_pretrained_weights(cfg.model)
    kind = build_kind(cfg, pretrained=False)
    assert cfg.model.backbone.pretrained is True  # the run's config is left as it is
    torch.manual_seed(0)
    trained = kind.net_factory()
    path = kind.save(trained, tmp_path / "w.pth")
    loaded = kind.load(path)
    assert not loaded.training and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                          trained.state_dict().values()))


@pytest.fixture
def fresh_probe(monkeypatch):
    """No offline variable and a hub probe not yet made; its connection is the test's to fake."""
    import detectors.backbones as backbones

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    backbones._connects.cache_clear()
    yield backbones
    backbones._connects.cache_clear()


class Connection:
    """What a connection that succeeded looks like to the probe."""

    def close(self) -> None:
        pass


def test_transformers_offline_counts_as_offline_without_a_probe(fresh_probe, monkeypatch):
    monkeypatch.setattr(fresh_probe.socket, "create_connection", lambda *a, **k: pytest.fail("probed"))
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert fresh_probe.hub_offline()


def test_a_probe_that_hangs_is_cut_short_and_made_once(fresh_probe, monkeypatch):
    import time

    calls = []
    monkeypatch.setattr(fresh_probe, "HUB_PROBE_TIMEOUT", 0.2)
    monkeypatch.setattr(fresh_probe.socket, "create_connection",
                        lambda address, timeout=None: calls.append(address) or time.sleep(3) or Connection())  # hangs
    start = time.perf_counter()
    assert fresh_probe.hub_offline() and fresh_probe.hub_offline()
    assert time.perf_counter() - start < 2.0 and calls == [("huggingface.co", 443)]


def test_the_probe_goes_to_the_proxy_that_serves_the_hub(fresh_probe, monkeypatch):
    calls = []
    monkeypatch.setattr(fresh_probe.socket, "create_connection",
                        lambda address, timeout=None: calls.append(address) or Connection())
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert fresh_probe.hub_reachable("https://huggingface.co") and not fresh_probe.hub_offline()
    assert calls == [("proxy.example", 3128)]
