"""Mixed precision: features are immune to autocast, ``precision=auto`` picks per device, and a non-finite
training loss stops the run with a clear error."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from detectors.backbones import create_backbone
from detectors.localfft_resnet import LocalFFTResNet
from detectors.streams import SpectraForgeDual
from experiments.training.builders import resolve_precision
from experiments.training.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from experiments.training.lit_module import DetectorModule
from features import (
    FFTMagnitude,
    GaussianBottleneck,
    HaarDWT,
    LaplacianResidual,
    LocalPatchFFT,
    RadialAngularHistogram,
    as_unit_float,
)

FEATURES = {
    "fft_magnitude_standardized": lambda: FFTMagnitude(standardize=True),
    "fft_magnitude_gray": lambda: FFTMagnitude(grayscale=True, standardize=True),
    "fft_magnitude_raw": lambda: FFTMagnitude(),
    "local_patch_fft": lambda: LocalPatchFFT(patch_size=32),
    "gaussian_bottleneck": lambda: GaussianBottleneck(sigma=1.5),
    "laplacian_residual": lambda: LaplacianResidual(),
    "radial_angular": lambda: RadialAngularHistogram(n_radial=64, n_angular=64, use_residual=True),
    "radial_angular_log": lambda: RadialAngularHistogram(n_radial=32, n_angular=16, log_power=True),
    "haar_dwt": lambda: HaarDWT(bands=["LH", "HL", "HH"]),
}


def _images(size: int = 224, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(FEATURES))
def test_feature_output_under_bf16_autocast_equals_float32(name):
    """At 224 px a log-magnitude map sums to ~2e5: summed in 16 bits, FFTMagnitude's standardisation
    was off by more than a standard deviation."""
    feature, x = FEATURES[name](), _images()
    expected = feature(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = feature(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_residual_spectra_under_bf16_autocast_equal_float32():
    feature, x = LaplacianResidual(), _images()
    expected = feature.spectra(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = feature.spectra(x)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["fft_magnitude_standardized", "local_patch_fft", "gaussian_bottleneck"])
def test_half_precision_input_computes_in_float32(name):
    feature, x = FEATURES[name](), _images(64)
    got = feature(x.to(torch.bfloat16))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, feature(x.to(torch.bfloat16).float()))


def test_backbones_still_run_under_autocast():
    """Only the features leave autocast: the convolutions after them run in bfloat16."""
    net = LocalFFTResNet(backbone=lambda in_chans: create_backbone("resnet18", in_chans=in_chans), patch_size=16)
    net.eval()
    seen = {}
    net.backbone.conv1.register_forward_hook(lambda m, i, o: seen.update(conv1=o.dtype))
    net.local_fft.register_forward_hook(lambda m, i, o: seen.update(feature=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        net(_images(32))
    assert seen == {"feature": torch.float32, "conv1": torch.bfloat16}


def test_spectraforge_dual_under_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(0)
    net = SpectraForgeDual(backbone=lambda in_chans: create_backbone("resnet18", in_chans=in_chans)).eval()
    x = _images(64, batch=4)
    with torch.no_grad():
        expected = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x).float()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.1)


def test_as_unit_float_matches_torchvision_scaling():
    from torchvision.transforms.v2 import functional as TF

    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(as_unit_float(x), TF.to_dtype(x, torch.float32, scale=True))
    y = torch.rand(2, 3, 4, 4)
    assert as_unit_float(y) is y
    with pytest.raises(TypeError, match="uint8"):
        as_unit_float(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


# --------------------------------------------------------------------------- precision=auto


@pytest.mark.parametrize(
    ("cuda", "bf16", "accelerator", "expected"),
    [
        (False, False, "auto", "32-true"),
        (True, True, "auto", "bf16-mixed"),
        (True, False, "auto", "16-mixed"),
        (True, True, "cpu", "32-true"),
        (True, True, "gpu", "bf16-mixed"),
    ],
)
def test_auto_precision_per_device(monkeypatch, cuda, bf16, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert resolve_precision("auto", accelerator) == expected
    assert resolve_precision("16-mixed", accelerator) == "16-mixed"  # an explicit choice is kept


# --------------------------------------------------------------------------- non-finite loss guard


class _Diverging(nn.Module):
    """Finite logits for ``finite_steps`` training calls, NaN after."""

    def __init__(self, finite_steps: int) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.finite_steps = finite_steps
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.mean(dim=(-2, -1))).squeeze(-1)
        if self.training:
            self.calls += 1
            if self.calls > self.finite_steps:
                out = out * float("nan")
        return out


def _loader(n: int = 64) -> DataLoader:
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    labels = (torch.arange(n) % 2).float()

    def collate(items):
        x, y = zip(*items)
        return {"image": torch.stack(x), "label": torch.stack(y), "skipped": torch.tensor(0)}

    return DataLoader(TensorDataset(images, labels), batch_size=8, collate_fn=collate)


@pytest.mark.parametrize("check_every", [1, 4])
def test_non_finite_loss_stops_training_naming_model_step_and_precision(tmp_path, check_every):
    module = DetectorModule(_Diverging(finite_steps=2), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    guard = StopOnNonFiniteLoss(model_name="toy_detector", check_every_n_steps=check_every)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
                        default_root_dir=tmp_path, precision="32-true")
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(module, train_dataloaders=_loader())
    message = str(err.value)
    assert "model=toy_detector" in message and "at step 2 " in message and "trainer.precision=32-true" in message
    assert trainer.global_step <= 2 + check_every  # stopped within one check interval, not at the end


def test_finite_training_is_not_stopped(tmp_path):
    module = DetectorModule(_Diverging(finite_steps=10**6), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StopOnNonFiniteLoss("toy", check_every_n_steps=1)], default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=_loader())
    assert trainer.global_step == 8


def test_sixteen_bit_advice_points_to_bf16():
    from experiments.training.callbacks import PRECISION_ADVICE

    assert "bf16-mixed" in PRECISION_ADVICE["16-mixed"]


def test_module_turns_uint8_batches_into_float_on_its_device():
    module = DetectorModule(_Diverging(10), optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    batch = {"image": torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), "label": torch.zeros(2)}
    out = module.on_after_batch_transfer(batch, 0)
    assert out["image"].dtype == torch.float32 and torch.all(out["image"] == 1.0)
    assert module.channels_last is False  # auto: only on CUDA


# --------------------------------------------------------------------------- CUDA


def _cnn_detectors():
    from detectors.streams import FrequencyCNN, SpatialCNN

    def bb(name):
        return lambda in_chans: create_backbone(name, in_chans=in_chans)

    return {
        "resnet34_localfft": lambda: LocalFFTResNet(bb("resnet34")),
        "spectraforge_dual": lambda: SpectraForgeDual(bb("resnet50")),
        "efficientnet_spatial": lambda: SpatialCNN(bb("efficientnet_b0")),
        "resnet50_fft": lambda: FrequencyCNN(bb("resnet50")),
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(_cnn_detectors()))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_training_step_at_224_px_is_finite_and_close_to_fp32(name, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    net = _cnn_detectors()[name]().cuda().to(memory_format=torch.channels_last).eval()
    x = torch.rand(8, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = (torch.arange(8, device="cuda") % 2).float()
    with torch.no_grad():
        expected = net(x).float()
    net.train()
    with torch.autocast("cuda", dtype=dtype):
        logits = net(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        got = net(x).float()
    torch.testing.assert_close(got, expected, atol=0.15, rtol=0.1)



def test_a_detector_outside_autocast_exports_and_loads_back(tmp_path):
    """torch.export (the logged model's pt2 program) keeps an autocast-off region as a node that
    torch.export.load refuses (``wrap_with_autocast is missing val field``); outside autocast the features add
    none, so the program of efficientnet_spatial (which failed so) loads and scores as the net."""
    from experiments.training.builders import build_module
    from tests.conftest import compose_config

    cfg = compose_config(["model=efficientnet_spatial", "experiment=demo", "++model.backbone.pretrained=false"],
                         tmp_path)
    net = build_module(cfg).net.eval()
    x = torch.rand(2, 3, 32, 32)
    program = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, tmp_path / "net.pt2")
    loaded = torch.export.load(tmp_path / "net.pt2").module()
    y = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(y), net(y))
