"""What scoring files with a trained detector gives: a :class:`Detection` per scored image, a :class:`Skipped`
per file that could not be scored, and the :class:`DetectionResult` of one ``detect`` call."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from experiments.errors import UserError


class DetectError(UserError):
    """A problem with the command's arguments (reference, input path, threshold, output): exit status 2."""


@dataclass
class Detection:
    """One scored image."""

    path: str
    p_synthetic: float
    label: str
    width: int = 0
    height: int = 0
    crop_fraction: float = 1.0  # the share of the (resized) input the scored crops cover
    tiles: int = 1


@dataclass
class Skipped:
    """One file that was not scored; ``reason`` is a short tag used to count them."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class DetectionResult:
    """Scores of every readable image, the skipped files, and the threshold used."""

    rows: list[Detection]
    skipped: list[Skipped]
    threshold: float
    val_threshold: float | None = None
    val_threshold_source: str = ""
    #: the run's operating point threshold on the printed scale (None: the run stored none), and what it is
    op_threshold: float | None = None
    op_note: str = ""
    #: the abstention band on the printed scale (None: always answer) and its ``eval.abstain`` spec
    band: tuple[float, float] | None = None
    band_note: str = ""
    ignored: int = 0  # files in scanned folders whose extension is not an image extension
    preprocess: str = ""
    source: str = ""
    #: what P(synthetic) is: "calibrated (...)" or "raw (...)"
    probability: str = ""
    data_stats: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped).most_common())
