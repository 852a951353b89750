"""What a detector could learn instead of generator traces: identical files shared by two splits, and
systematic real-vs-synthetic differences in file format, JPEG quality or image size.

:func:`leakage_warnings` compares the real and synthetic histograms (total-variation distance);
:func:`add_metadata_probe` measures the same leak as one number, the cross-validated AUROC of a logistic
regression that sees only the metadata (:data:`PROBE_FEATURES`: format, size, bytes per pixel, JPEG quality,
quantisation-table fingerprint, chroma subsampling, EXIF presence and Software tag, bit depth), on the files as
they are and again on what the configured equalizer (SPECTRAFORGE's Extreme Equalizer) makes of them;
:func:`metadata_probe_shares` says which of them carry its decision, and :func:`probe_warnings` warns when it
still separates the classes after the equalizer.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import combinations
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from PIL import Image

from experiments.data.audit.histograms import QUALITY_BIN_WIDTH, quality_bin, shares, total_variation
from experiments.data.audit.inspection import FileRecord, quant_table_fingerprint
from experiments.data.images import UnreadableImage, header_facts, load_rgb

if TYPE_CHECKING:
    from experiments.data.audit.report import DataReport

log = logging.getLogger(__name__)

#: total-variation distance between the real and synthetic histograms above which a leakage warning is given.
LEAKAGE_TV_THRESHOLD = 0.5
#: the setting that removes format, quality and size differences (features.equalizer.ExtremeEqualizer).
EQUALIZER_HINT = (
    "equalizer=extreme (ExtremeEqualizer: re-encodes every image, real and synthetic, to one JPEG quality and one size)"
)
#: folds of the stratified cross-validation of the metadata probe.
PROBE_FOLDS = 5
#: at most this many files per class are equalized for the probe and the warnings after the equalizer (seeded).
PROBE_MAX_PER_CLASS = 2000


class DataLeakageWarning(UserWarning):
    """Real and synthetic images differ in an incidental property (format, JPEG quality, size)."""



@dataclass(frozen=True)
class DuplicateGroup:
    """Readable files with identical bytes; ``files`` are ``(split, label, path)``."""

    sha256: str
    files: tuple[tuple[str, int, str], ...]

    @property
    def splits(self) -> set[str]:
        return {s for s, _, _ in self.files}

    @property
    def labels_differ(self) -> bool:
        return len({lab for _, lab, _ in self.files}) > 1

    def cross_split_pairs(self) -> list[tuple[tuple[str, int, str], tuple[str, int, str]]]:
        return [(a, b) for a, b in combinations(self.files, 2) if a[0] != b[0]]


def find_duplicates(records: Iterable[FileRecord]) -> list[DuplicateGroup]:
    """Groups of readable records with the same content hash, by hash (one count over the hashes first, so only
    the repeated ones are grouped)."""
    records = [r for r in records if r.readable and r.sha256]
    hashes = [r.sha256 for r in records]
    if len(set(hashes)) == len(hashes):  # no two alike: the common case, one set instead of a count
        return []
    repeated = {h for h, n in Counter(hashes).items() if n > 1}
    by_hash: dict[str, list[FileRecord]] = defaultdict(list)
    for r in records:
        if r.sha256 in repeated:
            by_hash[r.sha256].append(r)
    return [
        DuplicateGroup(digest, tuple((r.split, r.label, r.path) for r in group))
        for digest, group in sorted(by_hash.items())
        if len(group) > 1
    ]


def _leak_message(scope: str, what: str, tv: float, real: Counter, synthetic: Counter, extra: str = "",
                  hint: str = EQUALIZER_HINT) -> str:
    return (
        f"{scope}: real and synthetic images differ in {what} (total-variation distance {tv:.2f} > {LEAKAGE_TV_THRESHOLD}): "
        f"real {shares(real)}; synthetic {shares(synthetic)}{extra}. A detector can learn this instead of generator traces; "
        f"equalise it with {hint}."
    )


def _scope_warnings(report: DataReport, scope: str, generator: str | None, skip: set[str],
                    hint: str = EQUALIZER_HINT) -> dict[str, str]:
    real, synthetic = report.histograms(generator=generator, label=0), report.histograms(generator=generator, label=1)
    out = {}
    tv = total_variation(real.formats, synthetic.formats)
    if "format" not in skip and tv > LEAKAGE_TV_THRESHOLD:
        out["format"] = _leak_message(scope, "file format", tv, real.formats, synthetic.formats, hint=hint)
    real_q = Counter({quality_bin(q): n for q, n in real.jpeg_quality.items()})
    synthetic_q = Counter({quality_bin(q): n for q, n in synthetic.jpeg_quality.items()})
    tv = total_variation(real_q, synthetic_q)
    if "quality" not in skip and tv > LEAKAGE_TV_THRESHOLD:
        out["quality"] = _leak_message(scope, f"JPEG quality among JPEG files (bins of {QUALITY_BIN_WIDTH})", tv,
                                       real_q, synthetic_q, hint=hint)
    tv = total_variation(real.short_side, synthetic.short_side)
    if "size" not in skip and tv > LEAKAGE_TV_THRESHOLD:
        out["size"] = _leak_message(scope, "image size (short side, px)", tv, real.short_side, synthetic.short_side,
                                    f" (most common sizes: real {shares(real.sizes, 2)}; synthetic {shares(synthetic.sizes, 2)})", hint)
    return out


def leakage_warnings(report: DataReport) -> list[str]:
    """Warnings for systematic real-vs-synthetic differences in file format, JPEG quality or image size.

    Criterion: over the usable images of all splits, the total-variation distance
    (half the L1 distance of the normalised histograms, 0 = identical, 1 = disjoint)
    between the real and the synthetic histogram exceeds ``LEAKAGE_TV_THRESHOLD`` (0.5) for

    * the format (PIL's ``format``, from the content),
    * the estimated JPEG quality in bins of ``QUALITY_BIN_WIDTH`` (JPEG files only, when both classes have some),
    * the short side in the half-octave bins of ``SHORT_SIDE_EDGES``.

    It is tested on the whole dataset, then per generator (when there are several)
    for the properties the whole-dataset test did not already flag. Empty when
    every property is consistent, e.g. after equalising. When the report has equalized records
    (:func:`add_metadata_probe` with an equalizer), they are judged instead of the files.
    """
    hint = EQUALIZER_HINT if report.equalized is None else "a stronger equalizer (it survives this one)"
    report = report.leakage_view()
    generators = sorted({r.generator for r in report.records})
    scope = f"generator '{generators[0]}'" if len(generators) == 1 else "all generators"
    overall = _scope_warnings(report, scope, None, set(), hint)
    out = list(overall.values())
    if len(generators) > 1:
        for gen in generators:
            out += list(_scope_warnings(report, f"generator '{gen}'", gen, set(overall), hint).values())
    return out


#: the probe's feature families, in the order :func:`probe_design` lays them out (the decision shares group by them)
PROBE_FAMILIES = ("format", "size", "bytes per pixel", "JPEG quality", "quant table", "subsampling", "EXIF",
                  "software", "bit depth")
#: what the metadata probe sees of each file, as the report names it
PROBE_FEATURES = ("format", "width", "height", "bytes per pixel", "JPEG quality", "quantisation-table fingerprint",
                  "chroma subsampling", "EXIF presence", "EXIF Software", "bit depth")
#: EXIF Software values (lower case) of image editors; others read as "other software"
KNOWN_EDITORS = ("photoshop", "lightroom", "gimp", "affinity", "pixelmator", "paint.net", "capture one",
                 "darktable", "rawtherapee", "snapseed", "picasa", "facetune", "canva", "luminar", "acdsee")
#: the metadata probe's AUROC above which it is a warning after the equalizer, and ``task=check_data
#: task.strict=true`` fails (0.5 = the file metadata carry no label information)
PROBE_WARNING_AUROC = 0.65


def software_category(software: str | None) -> str:
    """``none`` (no Software tag), ``editor`` (one of :data:`KNOWN_EDITORS`) or ``other``."""
    if not software:
        return "none"
    return "editor" if any(name in software.lower() for name in KNOWN_EDITORS) else "other"


def _one_hot(values: Sequence, categories: Sequence) -> list[list[float]]:
    return [[float(v == c) for c in categories] for v in values]


def _jpeg_only(columns: list[list[float]], is_jpeg: np.ndarray) -> np.ndarray:
    """``columns`` (rows x k) with the non-JPEG rows set to the JPEG rows' mean: a JPEG-only property then
    measures differences among the JPEG files, not the format again (constant when all JPEGs agree)."""
    out = np.asarray(columns, dtype=np.float64).reshape(len(is_jpeg), -1)
    if out.shape[1] and is_jpeg.any():
        out[~is_jpeg] = out[is_jpeg].mean(axis=0)
    elif out.shape[1]:
        out[:] = 0.0
    return out


def probe_design(records: Sequence[FileRecord]) -> tuple[np.ndarray, list[str]]:
    """``(X, families)``: the ``(N, F)`` probe inputs of readable records and the :data:`PROBE_FAMILIES` entry of
    each column. Format, quantisation-table fingerprint (over the fingerprints seen), subsampling and software
    category (:func:`software_category`) are one-hot; width, height, bytes per pixel (file size over width x
    height), JPEG quality, EXIF presence (0/1) and bit depth are numbers. The JPEG-only properties (quality,
    fingerprint, subsampling) of a non-JPEG file take the JPEG files' mean (:func:`_jpeg_only`)."""
    formats = sorted({r.format or "unknown" for r in records})
    is_jpeg = np.asarray([r.format == "JPEG" for r in records], dtype=bool)
    tables = sorted({r.quant_table for r in records if r.quant_table})
    samplings = sorted({r.subsampling for r in records if r.subsampling})
    categories = sorted({software_category(r.software) for r in records})
    blocks = [
        ("format", np.asarray(_one_hot([r.format or "unknown" for r in records], formats))),
        ("size", np.asarray([[float(r.width), float(r.height)] for r in records])),
        ("bytes per pixel", np.asarray([[r.n_bytes / max(1, r.width * r.height)] for r in records])),
        ("JPEG quality", _jpeg_only([[float(r.jpeg_quality or 0)] for r in records], is_jpeg)),
        ("quant table", _jpeg_only(_one_hot([r.quant_table for r in records], tables), is_jpeg)),
        ("subsampling", _jpeg_only(_one_hot([r.subsampling for r in records], samplings), is_jpeg)),
        ("EXIF", np.asarray([[float(r.exif)] for r in records])),
        ("software", np.asarray(_one_hot([software_category(r.software) for r in records], categories))),
        ("bit depth", np.asarray([[float(r.bit_depth)] for r in records])),
    ]
    blocks = [(family, block.reshape(len(records), -1)) for family, block in blocks]
    families = [family for family, block in blocks for _ in range(block.shape[1])]
    return np.concatenate([block for _, block in blocks], axis=1), families


def metadata_features(records: Sequence[FileRecord]) -> np.ndarray:
    """``(N, F)`` probe inputs of readable records (:func:`probe_design`)."""
    return probe_design(records)[0]


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _labelled(records: Iterable[FileRecord]) -> tuple[list[FileRecord], np.ndarray, int]:
    usable = [r for r in records if r.readable]
    labels = np.asarray([r.label for r in usable], dtype=np.int64)
    smallest = int(min(np.sum(labels == 0), np.sum(labels == 1))) if usable else 0
    return usable, labels, smallest


def metadata_probe_auroc(records: Iterable[FileRecord], seed: int = 0, folds: int = PROBE_FOLDS) -> float:
    """Cross-validated AUROC of real vs synthetic from the metadata alone (:func:`probe_design`).

    A standardised logistic regression (scikit-learn) is scored out of fold with a seeded stratified
    ``folds``-fold split (fewer folds when a class has fewer files), and the AUROC of the pooled out-of-fold
    probabilities is returned: 0.5 when the metadata carry no label information, 1.0 when they alone
    separate the classes (e.g. JPEG photos against PNG fakes). NaN with fewer than two files of a class.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    usable, labels, smallest = _labelled(records)
    if smallest < 2:
        return float("nan")
    split = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    probs = cross_val_predict(_probe(), metadata_features(usable), labels, cv=split, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, probs))


def metadata_probe_shares(records: Iterable[FileRecord]) -> dict[str, float]:
    """Each feature family's share of the probe's decision: the absolute standardised coefficients of the probe
    (the logistic regression of :func:`metadata_probe_auroc` on standardised inputs, fitted on every file),
    summed per :data:`PROBE_FAMILIES` entry and normalised to sum to 1 (standardised coefficients as relative
    importance: Menard 2004, "Six approaches to calculating standardized logistic regression coefficients", The
    American Statistician 58(3)). A feature constant over the files has no weight; collinear families (two
    properties that always change together) share the weight between them. Empty with fewer than two files
    of a class, or when no feature varies."""
    usable, labels, smallest = _labelled(records)
    if smallest < 2:
        return {}
    features, families = probe_design(usable)
    weights = np.abs(_probe().fit(features, labels)[-1].coef_[0])
    total = float(weights.sum())
    if not total > 0:
        return {}
    shares = {family: 0.0 for family in PROBE_FAMILIES}
    for family, weight in zip(families, weights):
        shares[family] += float(weight) / total
    return shares


def probe_warnings(report: DataReport, limit: float = PROBE_WARNING_AUROC) -> list[str]:
    """A warning when the metadata probe still tells real from synthetic after the configured equalizer
    (AUROC above ``limit``), naming the families that carry its decision; empty without an equalizer."""
    probe = report.probe.get("equalized", float("nan"))
    if not probe > limit:
        return []
    shares = report.probe_shares.get("equalized", {})
    top = ", ".join(f"{family} {share:.0%}" for family, share in sorted(shares.items(), key=lambda kv: -kv[1])
                    if share >= 0.1)
    return [f"the metadata probe tells real from synthetic with AUROC {probe:.3f} after the equalizer "
            f"{report.equalizer} (above {limit})" + (f"; its decision rests on {top}" if top else "")
            + ". The equalizer leaves this difference, and a detector can learn it instead of generator traces."]


def equalized_record(record: FileRecord, equalizer) -> FileRecord:
    """``record`` as the equalizer outputs the file: its size, and, when it re-encodes (``jpeg_quality``), format
    JPEG at that quality and the bytes of the output re-encoded with the equalizer's settings. Without a JPEG
    step the pixels keep the file's format and compression, and its bytes per pixel."""
    from features.equalizer import JPEG_SUBSAMPLING

    image = equalizer(load_rgb(record.path))
    width, height = image.size
    quality = getattr(equalizer, "jpeg_quality", None)
    if quality is None:
        per_pixel = record.n_bytes / max(1, record.width * record.height)
        return replace(record, width=width, height=height, n_bytes=int(round(per_pixel * width * height)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality), subsampling=JPEG_SUBSAMPLING)
    with Image.open(buffer) as encoded:  # the header only: its tables and subsampling
        tables = {int(k): list(v) for k, v in encoded.quantization.items()}
        header = header_facts(encoded)
    return replace(record, format="JPEG", width=width, height=height, jpeg_quality=int(quality),
                   n_bytes=len(buffer.getvalue()), exif=0, software=None, quant_table=quant_table_fingerprint(tables),
                   subsampling=header["subsampling"], bit_depth=8)


def probe_sample(report: DataReport, max_per_class: int = PROBE_MAX_PER_CLASS, seed: int = 0) -> list[FileRecord]:
    """Up to ``max_per_class`` usable records of each class, a seeded random subset, in report order."""
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in (0, 1):
        rows = [i for i, r in enumerate(report.records) if r.label == label and report.usable(r)]
        if len(rows) > max_per_class:
            rows = rng.choice(rows, size=max_per_class, replace=False).tolist()
        keep += rows
    return [report.records[i] for i in sorted(keep)]


def add_metadata_probe(report: DataReport, equalizer=None, seed: int = 0, num_threads: int | None = None,
                       max_per_class: int = PROBE_MAX_PER_CLASS) -> DataReport:
    """Set ``report.probe["raw"]`` (the files as they are) and, with an ``equalizer`` (PIL -> PIL, e.g.
    ``ExtremeEqualizer``), ``report.equalized`` (up to ``max_per_class`` files per class through it, seeded) and
    ``report.probe["equalized"]``; the leakage warnings then judge the equalized files. Returns ``report``."""
    usable = [r for r in report.records if report.usable(r)]
    report.probe = {"raw": metadata_probe_auroc(usable, seed)}
    report.probe_shares = {"raw": metadata_probe_shares(usable)}
    if equalizer is None:
        return report
    sample = probe_sample(report, max_per_class, seed)
    threads = num_threads or min(16, 2 * (os.cpu_count() or 1))

    def equalize(record: FileRecord) -> FileRecord | None:
        try:
            return equalized_record(record, equalizer)
        except (UnreadableImage, OSError, ValueError) as err:
            log.warning("data check: cannot equalize %s (%s)", record.path, err)
            return None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        report.equalized = [r for r in pool.map(equalize, sample) if r is not None]
    report.equalizer = repr(equalizer)
    report.probe["equalized"] = metadata_probe_auroc(report.equalized, seed)
    report.probe_shares["equalized"] = metadata_probe_shares(report.equalized)
    return report
