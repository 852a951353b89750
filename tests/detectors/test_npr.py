"""NPR (Tan et al., CVPR 2024): the residual against analytic cases and F.interpolate, its precision and errors;
the truncated-ResNet detector's shape, size, config and learning a separable toy set."""

from __future__ import annotations

import mlflow
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from detectors.npr import NPRResNet
from experiments.evaluation.gradcam import stream_cams
from experiments.tasks.train import train
from features.npr import NPRResidual
from tests.conftest import compose_config, fit_auroc, make_genimage_tree


def interpolate_reference(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The paper's definition: ``x - interpolate(interpolate(x, 1/factor, nearest), factor, nearest)``."""
    down = F.interpolate(x, scale_factor=1 / factor, mode="nearest", recompute_scale_factor=True)
    return x - F.interpolate(down, scale_factor=factor, mode="nearest", recompute_scale_factor=True)


# ---------------------------------------------------------------- the residual


@pytest.mark.parametrize("factor", [2, 4])
def test_matches_nearest_interpolation_round_trip(factor):
    x = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(NPRResidual(factor)(x), interpolate_reference(x, factor), rtol=0, atol=0)


def test_constant_cells_and_nearest_upsampling_give_zero_while_bilinear_does_not():
    small = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cells = small.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # constant on each 2x2 cell
    assert torch.equal(NPRResidual()(cells), torch.zeros_like(cells))
    nearest = F.interpolate(small, scale_factor=2, mode="nearest")
    assert torch.equal(NPRResidual()(nearest), torch.zeros_like(nearest))
    bilinear = F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)
    assert NPRResidual()(bilinear).abs().amax(dim=(1, 2, 3)).min() > 1e-2


def test_checkerboard_and_ramp_give_known_residuals():
    """A +-a checkerboard on grey: each cell is [[+a, -a], [-a, +a]], minus its top-left +a."""
    a, size = 0.1, 8
    i = torch.arange(size).view(-1, 1)
    j = torch.arange(size).view(1, -1)
    board = (0.5 + a * (-1.0) ** (i + j)).expand(1, 3, size, size)
    expected = torch.tensor([[0.0, -2 * a], [-2 * a, 0.0]]).repeat(size // 2, size // 2)
    torch.testing.assert_close(NPRResidual()(board)[0], expected.expand(3, -1, -1), rtol=0, atol=1e-7)
    ramp = (j * 1.0).expand(1, 3, size, size)  # x[i, j] = j: the residual is j mod 2
    torch.testing.assert_close(NPRResidual()(ramp)[0, 0], (j % 2).float().expand(size, size), rtol=0, atol=0)
    assert torch.equal(NPRResidual(factor=4)(ramp)[0, 0, 0], (torch.arange(size) % 4).float())


def test_gradient_is_one_except_minus_three_at_each_cell_anchor():
    x = torch.rand(1, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    out = NPRResidual()(x)
    assert out.dtype == torch.float64
    out.sum().backward()
    expected = torch.ones(4, 6, dtype=torch.float64)
    expected[::2, ::2] = -3.0  # d/dx_anchor of sum over the cell of (x - x_anchor) = 1 - 4
    assert torch.equal(x.grad[0, 1], expected)
    assert torch.autograd.gradcheck(NPRResidual(), (torch.rand(1, 3, 4, 4, dtype=torch.float64, requires_grad=True),))


def test_autocast_gives_the_float32_residual_at_224px():
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    npr = NPRResidual()
    reference = npr(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = npr(x)
    assert mixed.dtype == torch.float32 and reference.shape == (4, 3, 224, 224)
    torch.testing.assert_close(mixed, reference, rtol=0, atol=1e-4)
    assert npr(x.to(torch.bfloat16)).dtype == torch.float32


def test_large_cpu_batches_go_in_slices_with_the_same_result():
    x = torch.rand(24, 3, 128, 128, generator=torch.Generator().manual_seed(3))  # > CPU_CHUNK_ELEMENTS
    torch.testing.assert_close(NPRResidual()(x), interpolate_reference(x, 2), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 3, 33, 32), (1, 3, 32, 31)])
def test_size_not_a_multiple_of_the_factor_is_a_clear_error(shape):
    h, w = shape[-2:]
    with pytest.raises(ValueError, match=rf"{h}x{w} is not a multiple of the NPR factor 2.*data\.crop_size"):
        NPRResidual()(torch.rand(*shape))


def test_other_bad_inputs_and_factors_are_clear_errors():
    with pytest.raises(ValueError, match="data.crop_size to a multiple of 4"):
        NPRResidual(factor=4)(torch.rand(1, 3, 34, 32))
    with pytest.raises(ValueError, match="in_chans"):
        NPRResidual()(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="factor"):
        NPRResidual(factor=1)


# ---------------------------------------------------------------- the detector


def test_detector_shapes_widths_and_parameter_count_at_64px():
    net = NPRResNet()
    x = torch.rand(2, 3, 64, 64)
    assert net.stages.layer2(net.stages.layer1(net.stem(net.residual(x)))).shape == (2, 512, 8, 8)  # stride 8
    assert net.forward_features(x).shape == (2, 512) and net.num_features == 512
    logits = net(x)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert [len(s) for s in net.stages] == [3, 4]
    assert set(net.cam_layers()) == {"npr"} and net.cam_layers()["npr"] is net.stages.layer2
    # stem 3x3 conv + BN (1,856) + ResNet-50's layer1 and layer2 (1,435,392) + Linear(512, 1) (513)
    assert sum(p.numel() for p in net.parameters()) == 1_437_761


def test_detector_sees_only_the_residual():
    """Images with equal NPR maps get equal logits: the classifier never sees the cell anchors' values."""
    net = NPRResNet(normalize_input=False).eval()
    x = torch.rand(2, 3, 32, 32)
    shift = torch.rand(2, 3, 16, 16).repeat_interleave(2, -2).repeat_interleave(2, -1)  # constant per cell
    with torch.no_grad():
        torch.testing.assert_close(net(x + shift), net(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="data.crop_size"):
        net(torch.rand(1, 3, 63, 64))
    with pytest.raises(ValueError, match="model.net.blocks"):
        NPRResNet(blocks=[])


def test_config_builds_the_paper_detector_and_optimiser(tmp_path):
    cfg = compose_config(["model=npr"], tmp_path)
    assert cfg.model.name == "npr" and cfg.model.kind._target_ == "experiments.training.kinds.LightningDetector" and "backbone" not in cfg.model
    net = instantiate(cfg.model.net)
    assert isinstance(net, NPRResNet) and net.npr.factor == 2 and len(net.stages) == 2
    assert isinstance(net.head[-1], torch.nn.Linear) and net.head[-1].in_features == 512
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == pytest.approx(2e-4)
    scheduler = instantiate(cfg.model.scheduler)(optimizer=optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR) and scheduler.gamma == pytest.approx(0.8)
    demo = compose_config(["model=npr", "experiment=demo"], tmp_path)
    assert demo.data.crop_size % demo.model.net.factor == 0


def test_detector_learns_separable_toy_set():
    """The toy fakes carry a +-12 grey-level period-2 checkerboard, which NPR keeps whole: 5 steps already reach
    AUROC 1.0 for init seeds 0-2, so 10 steps keep the test short."""
    torch.manual_seed(0)
    assert fit_auroc(NPRResNet(), size=32, steps=10) >= 0.9


def test_gradcam_of_the_npr_stream_has_the_image_size():
    cams = stream_cams(NPRResNet().eval(), torch.rand(2, 3, 32, 32))
    assert set(cams) == {"npr"} and cams["npr"].shape == (2, 32, 32)


def test_trains_through_the_composed_config(tmp_path):
    tree = make_genimage_tree(tmp_path / "genimage", n=6, size=32)
    cfg = compose_config(["model=npr", "data=genimage_tiny", f"data.root={tree}", "data.crop_size=32",
                          "data.resize_size=null", "data.batch_size=8", "data.num_workers=0", "debug=fdr",
                          "diagnostics=false"], tmp_path)
    best = train(cfg)
    assert best is not None and 0.0 <= best <= 1.0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("detectors-genimage_tiny").experiment_id])
    assert len(runs) == 1 and runs[0].data.params["model/name"] == "npr"
    assert runs[0].data.metrics["model/params"] == 1_437_761 and "test/auc" in runs[0].data.metrics
    assert "npr.pth" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
