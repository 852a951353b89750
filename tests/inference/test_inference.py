"""experiments/inference: the one device resolver, the shared scoring loop and detect's folder scan, without a
trained run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.errors import UserError
from experiments.inference.device import DeviceUnavailable, resolve_device
from experiments.inference.scoring import SharedScores, readable_batches, score_images, score_split


class _Mean:
    """A stand-in for a LoadedDetector: P(synthetic) is the mean pixel; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return images.float().mean(dim=(1, 2, 3)).reshape(-1, 1)

    def predict_calibrated_proba(self, images: torch.Tensor) -> torch.Tensor:
        return 1 - self.predict_proba(images)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == resolve_device() == expected
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            resolve_device("cuda")
        assert issubclass(DeviceUnavailable, UserError)


def test_score_images_is_flat_and_calibrated_on_request():
    det, x = _Mean(), torch.rand(3, 3, 4, 4)
    raw = score_images(det, x)
    assert raw.shape == (3,)
    torch.testing.assert_close(score_images(det, x, calibrated=True), 1 - raw)


def test_shared_scores_reuse_identical_batches_per_key():
    a, b = _Mean(), _Mean()
    scores = SharedScores({"a": a, "b": b})
    x = torch.rand(2, 3, 4, 4)
    first = scores(x, key=0)
    assert set(first) == {"a", "b"} and a.calls == b.calls == 1
    scores(x.clone(), key=0)  # same pixels, same key: not scored again
    assert a.calls == 1
    scores(x, key=1)  # another key (another batch number) is scored
    scores(x + 0.5, key=0)  # other pixels are scored
    assert a.calls == b.calls == 3
    scores.forget()
    scores(x, key=0)
    assert a.calls == 4


def test_score_split_skips_empty_batches():
    batches = [{"empty": True},
               {"image": torch.rand(2, 3, 4, 4), "label": torch.tensor([0, 1]), "generator": torch.tensor([0, 0]),
                "index": torch.tensor([0, 1])}]
    assert len(list(readable_batches(batches))) == 1
    predictions = score_split(_Mean(), batches, ["g"], desc=None)
    assert list(predictions.label) == [0, 1] and predictions.prob.shape == (2,)
    with pytest.raises(ValueError, match="no readable image"):
        score_split(_Mean(), [{"empty": True}], ["g"], desc=None)


def test_detect_walks_folders_with_the_data_scan_rule(tmp_path):
    """``spectral-detect``'s folder scan is the data scan's walk, with the scanned folder as its root."""
    from experiments.inference.files import collect_images

    folder, outside = tmp_path / "in", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    for path in (folder / "top.png", folder / "sub" / "a.png", folder / "sub" / "b.png", outside / "o.png"):
        path.write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    (folder / "a_link").symlink_to(folder / "sub", target_is_directory=True)  # inside: reached anyway
    (folder / "gone.png").symlink_to(tmp_path / "missing.png")
    (folder / "away").symlink_to(outside, target_is_directory=True)
    files, skipped, ignored = collect_images([folder])
    assert files == [folder / "top.png", folder / "sub" / "a.png", folder / "sub" / "b.png"]  # each file once
    assert sorted((Path(s.path).name, s.reason) for s in skipped) == [("away", "symlink outside folder"),
                                                                       ("gone.png", "broken symlink")]
    assert ignored == 1
    followed, _, _ = collect_images([folder], follow_symlinks=True)
    assert folder / "away" / "o.png" in followed
