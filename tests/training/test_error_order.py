"""``task=train`` reports the user's mistakes in order, each before anything is downloaded or built: the config,
the data layout, the tracking store, the pretrained weights last; offline is told at once. No network anywhere."""

from __future__ import annotations

import socket
import time

import pytest
from huggingface_hub import constants

import detectors.backbones as backbones
import experiments.tasks.train as train_task
from detectors.backbones import PretrainedWeightsUnavailable
from experiments.data.layouts import DatasetLayoutError
from experiments.tracking import TrackingUnavailable
from tests.conftest import compose_config


@pytest.fixture
def network_calls(monkeypatch) -> list:
    """Every attempt to open a connection or look a name up, recorded and refused (the test then asserts none)."""
    calls: list = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("the tests make no network call")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a, **k: refuse(*a, **k))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return calls


@pytest.fixture
def online_env(monkeypatch, tmp_path):
    """Neither ``HF_HUB_OFFLINE`` nor ``TRANSFORMERS_OFFLINE``, an empty Hugging Face cache, a fresh hub probe."""
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    backbones._connects.cache_clear()
    yield
    backbones._connects.cache_clear()


@pytest.fixture
def weights_checks(monkeypatch) -> list:
    """The seconds each call of train's pretrained-weights check took (the check itself goes on as it is)."""
    calls: list[float] = []
    check = train_task.check_pretrained_weights

    def recording(model_cfg):
        start = time.perf_counter()
        try:
            return check(model_cfg)
        finally:
            calls.append(time.perf_counter() - start)

    monkeypatch.setattr(train_task, "check_pretrained_weights", recording)
    return calls


def test_an_empty_folder_with_the_default_weights_is_a_layout_error_and_no_network_call(
        tmp_path, online_env, network_calls, weights_checks):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = compose_config(["data=genimage_tiny", f"data.root={empty}"], tmp_path, keep_pretrained=True)
    assert cfg.model.backbone.pretrained is True  # the default: ImageNet weights
    with pytest.raises(DatasetLayoutError) as err:
        train_task.train(cfg)
    message = str(err.value)
    assert "has no generator folders" in message and "Expected layout" in message
    assert "<generator>/" in message and "nature/" in message and "ai/" in message
    assert weights_checks == [] and network_calls == []


def test_a_tracking_server_that_does_not_answer_is_reported_before_the_weights(genimage_tree, tmp_path,
                                                                                weights_checks):
    cfg = compose_config(["data=genimage_tiny", f"data.root={genimage_tree}",
                          "logger.tracking_uri=http://127.0.0.1:9"], tmp_path, keep_pretrained=True)
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        train_task.train(cfg)
    assert weights_checks == []


def test_a_split_without_both_classes_is_reported_before_the_weights(genimage_tree, tmp_path, weights_checks):
    for folder in genimage_tree.glob("*/val/ai"):  # the test split keeps only real images
        for image in folder.iterdir():
            image.unlink()
    cfg = compose_config(["data=genimage_tiny", f"data.root={genimage_tree}"], tmp_path, keep_pretrained=True)
    with pytest.raises(DatasetLayoutError, match="ai holds no images"):
        train_task.train(cfg)
    assert weights_checks == []


def test_offline_with_missing_weights_fails_at_once_with_the_three_ways_out(
        genimage_tree, tmp_path, online_env, monkeypatch, network_calls, weights_checks):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose_config(["data=genimage_tiny", f"data.root={genimage_tree}"], tmp_path, keep_pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailable) as err:
        train_task.train(cfg)
    assert len(weights_checks) == 1 and weights_checks[0] < 5.0 and network_calls == []
    _assert_three_ways(str(err.value))


def test_a_hub_that_does_not_answer_the_probe_is_offline_at_once(tmp_path, online_env, monkeypatch, network_calls):
    """No offline variable: one refused probe, then the cache only (no retries), in under 5 s."""
    probes: list = []

    def refused(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)  # the probe's own connection, and any other
    cfg = compose_config([], tmp_path, keep_pretrained=True)
    start = time.perf_counter()
    for _ in range(2):  # the second check asks the probe's answer, not the hub
        with pytest.raises(PretrainedWeightsUnavailable) as err:
            train_task.check_pretrained_weights(cfg.model)
    assert time.perf_counter() - start < 5.0
    assert probes == [(("huggingface.co", 443), backbones.HUB_PROBE_TIMEOUT)]
    assert network_calls == []  # after the probe, nothing: the cache alone is read
    _assert_three_ways(str(err.value))


def test_the_layout_check_scans_once_for_setup(genimage_tree, tmp_path, monkeypatch):
    from experiments.data.datamodule import DetectorDataModule
    from experiments.training.builders import build_datamodule

    scans: list = []
    scan = DetectorDataModule.scan
    monkeypatch.setattr(DetectorDataModule, "scan", lambda self: scans.append(1) or scan(self))
    cfg = compose_config(["data=genimage_tiny", f"data.root={genimage_tree}", "data.cache=false"], tmp_path)
    datamodule = build_datamodule(cfg)
    splits = datamodule.check_layout()
    datamodule.setup()
    assert len(scans) == 1 and datamodule.splits is splits and set(datamodule.datasets) == {"train", "val", "test"}


def _assert_three_ways(message: str) -> None:
    assert "resnet34.a1_in1k" in message and "timm/resnet34.a1_in1k" in message
    assert "three ways" in message and "HF_HOME" in message
    assert "model.backbone.weights_path=" in message and "model.backbone.pretrained=false" in message
