"""The data report: what one scan of a dataset found (:class:`DataReport`), as a table, JSON, and the MLflow
counts a training run logs; and ``data_stats.json``, the train images' sizes that ``detect`` compares with.

One pass over every file of the suite's train / val / test splits (each file is read once, hashed and fully
decoded once, since truncation only shows on a full decode) gives the report:

* image counts per split, generator and class;
* format (from the content, not the extension), size and JPEG-quality histograms;
* unreadable files with their reason, and images smaller than the crop;
* identical files (SHA-256 of the bytes) shared by two splits;
* the leakage warnings and the metadata probe (:mod:`experiments.data.audit.leakage`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from experiments.data.audit.histograms import Histograms, shares
from experiments.data.audit.inspection import FileRecord
from experiments.data.audit.leakage import (
    PROBE_FEATURES,
    PROBE_FOLDS,
    DuplicateGroup,
    leakage_warnings,
    probe_warnings,
)
from experiments.data.layouts import CLASS_NAMES
from experiments.data.walk import SkippedLink

DEFAULT_MAX_BAD_FRACTION = 0.01
#: how many files each list in the text report shows (the JSON report has all of them).
LIST_LIMIT = 20

@dataclass
class DataReport:
    """Everything :func:`scan_dataset` found; ``records`` holds one :class:`FileRecord` per file, in split order.

    ``min_size``: images with a shorter side below it are "too small" (0 = no check).
    """

    records: list[FileRecord]
    min_size: int = 0
    root: str | None = None
    seconds: float = 0.0
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    #: the usable files as the configured equalizer outputs them (:func:`add_metadata_probe`); None without one
    equalized: list[FileRecord] | None = None
    #: ``{"raw": AUROC, "equalized": AUROC}`` of the metadata probe (:func:`metadata_probe_auroc`)
    probe: dict[str, float] = field(default_factory=dict)
    #: ``{"raw": {family: share}, "equalized": ...}``: each feature family's share of the probe's decision
    #: (:func:`~experiments.data.audit.leakage.metadata_probe_shares`)
    probe_shares: dict[str, dict[str, float]] = field(default_factory=dict)
    equalizer: str = ""
    #: the symlinks the scan did not follow (a link out of the dataset, a broken link): not read, listed here
    skipped_links: list[SkippedLink] = field(default_factory=list)
    #: which ``data.check`` mode was used and why (:meth:`~experiments.data.audit.sampling.DataCheck.resolve`)
    check: str = ""
    #: files in the splits; more than ``n_images`` when a sample was checked (0 = ``n_images``)
    population: int = 0
    #: False with ``data.check=off``: no file was read
    checked: bool = True
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def sampled(self) -> bool:
        """Whether the records are a sample of the splits' files (the bad share is then an estimate)."""
        return self.checked and self.population > len(self.records)

    def _derived(self) -> dict[str, Any]:
        """The per-record verdicts and per-group histograms, computed in one pass and kept (the report's
        records do not change once scanned)."""
        key = (id(self.records), len(self.records), self.min_size)
        if self._memo.get("key") != key:
            usable = [r.readable and r.short_side >= self.min_size for r in self.records]
            groups: dict[tuple[str, str, int], list[FileRecord]] = defaultdict(list)
            for r in self.records:
                groups[(r.split, r.generator, r.label)].append(r)
            order = {s: i for i, s in enumerate(dict.fromkeys(r.split for r in self.records))}
            groups = dict(sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2])))
            self._memo.clear()
            self._memo.update(
                key=key, usable=usable, groups=groups,
                bad=[r for r, ok in zip(self.records, usable) if not ok],
                hist={k: Histograms.of(r for r in recs if self.usable(r)) for k, recs in groups.items()},
                counts={k: self._count(recs) for k, recs in groups.items()})
        return self._memo

    def leakage_view(self) -> "DataReport":
        """The report the leakage warnings judge: the equalized files when an equalizer is configured."""
        if self.equalized is None:
            return self
        return DataReport(self.equalized, 0, self.root)

    def content_digests(self) -> dict[str, tuple[int, str]]:
        """``{path: (size in bytes, content hash)}`` of the readable files the check hashed, for the manifest
        (:func:`experiments.data.integrity.build_manifest`), so it does not hash them again."""
        return {r.path: (r.n_bytes, r.sha256) for r in self.records if r.readable and r.sha256 and r.n_bytes > 0}

    # counts
    @property
    def n_images(self) -> int:
        return len(self.records)

    @property
    def unreadable(self) -> list[FileRecord]:
        return [r for r in self._derived()["bad"] if not r.readable]

    @property
    def too_small(self) -> list[FileRecord]:
        return [r for r in self._derived()["bad"] if r.readable]

    def usable(self, record: FileRecord) -> bool:
        return record.readable and record.short_side >= self.min_size

    @property
    def bad_files(self) -> list[FileRecord]:
        """Files a loader would drop: unreadable, or smaller than ``min_size``."""
        return list(self._derived()["bad"])

    @property
    def bad_fraction(self) -> float:
        return len(self.bad_files) / self.n_images if self.records else 0.0

    @property
    def cross_split_duplicate_pairs(self) -> int:
        return sum(len(g.cross_split_pairs()) for g in self.duplicates)

    @property
    def within_split_duplicates(self) -> int:
        """Files that repeat another file of the same split (each extra copy counts once)."""
        return sum(n - 1 for g in self.duplicates for n in Counter(s for s, _, _ in g.files).values())

    def groups(self) -> dict[tuple[str, str, int], list[FileRecord]]:
        """Records per ``(split, generator, label)``, in a stable order."""
        return dict(self._derived()["groups"])

    def group_counts(self, records: list[FileRecord]) -> dict[str, int]:
        """Images, usable, unreadable and too-small files among ``records`` (those of a group are kept)."""
        derived = self._derived()
        if records:
            first = records[0]
            kept = derived["counts"].get((first.split, first.generator, first.label))
            if kept is not None and derived["groups"][(first.split, first.generator, first.label)] is records:
                return dict(kept)
        return self._count(records)

    def _count(self, records: list[FileRecord]) -> dict[str, int]:
        unreadable = sum(1 for r in records if r.reason is not None)
        small = sum(1 for r in records if r.reason is None and min(r.width, r.height) < self.min_size)
        return {"images": len(records), "usable": len(records) - unreadable - small, "unreadable": unreadable,
                "too_small": small}

    def histograms(
        self, split: str | None = None, generator: str | None = None, label: int | None = None
    ) -> Histograms:
        """Histograms over the usable images matching the given split / generator / label (None = any)."""
        return Histograms.merged(
            h for (s, g, lab), h in self._derived()["hist"].items()
            if (split is None or s == split) and (generator is None or g == generator) and (label is None or lab == label)
        )

    def empty_classes(self) -> list[str]:
        """Problems of splits in which a class, or a generator's class, has no usable image."""
        problems, flagged = [], set()
        groups = self.groups()
        for split in dict.fromkeys(s for s, _, _ in groups):
            for label, name in enumerate(CLASS_NAMES):
                recs = [r for (s, _, lab), rs in groups.items() if s == split and lab == label for r in rs]
                if not any(self.usable(r) for r in recs):
                    flagged.add((split, label))
                    problems.append(f"the {split} split has no usable {name} image ({_unusable(recs)})")
        for (split, gen, label), recs in groups.items():
            if (split, label) not in flagged and not any(self.usable(r) for r in recs):
                problems.append(
                    f"the {split} split has no usable {CLASS_NAMES[label]} image of generator '{gen}' "
                    f"({_unusable(recs)})"
                )
        return problems

    # output
    def summary_metrics(self) -> dict[str, float]:
        """The counts logged to MLflow by :func:`preflight`."""
        return {
            "data/images": float(self.n_images),
            "data/unreadable": float(len(self.unreadable)),
            "data/too_small": float(len(self.too_small)),
            "data/bad_fraction": float(self.bad_fraction),
            "data/duplicates_across_splits": float(self.cross_split_duplicate_pairs),
            "data/links_skipped": float(len(self.skipped_links)),
            "data/scan_seconds": float(self.seconds),
            "data/checked_fraction": float(self.n_images / self.population) if self.population else 1.0,
            **{f"data/probe_auroc_{state}": float(value) for state, value in self.probe.items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: totals, per-group counts and histograms, every bad file, every duplicate group, warnings."""
        return {
            "root": self.root,
            "min_size": self.min_size,
            "seconds": round(self.seconds, 3),
            "check": self.check,
            "checked": self.checked,
            "sampled": self.sampled,
            "population": self.population or self.n_images,
            "images": self.n_images,
            "unreadable_count": len(self.unreadable),
            "too_small_count": len(self.too_small),
            "bad_fraction": self.bad_fraction,
            "unreadable_reasons": dict(Counter(r.reason for r in self.unreadable)),
            "groups": [
                {"split": split, "generator": gen, "class": CLASS_NAMES[label], "label": label,
                 **self.group_counts(recs), **self._derived()["hist"][(split, gen, label)].to_dict()}
                for (split, gen, label), recs in self.groups().items()
            ],
            "unreadable": [
                {"path": r.path, "split": r.split, "generator": r.generator, "label": r.label,
                 "reason": r.reason, "detail": r.detail}
                for r in self.unreadable
            ],
            "skipped_links_count": len(self.skipped_links),
            "skipped_links": [{"path": s.path, "target": s.target, "reason": s.reason} for s in self.skipped_links],
            "too_small": [
                {"path": r.path, "split": r.split, "generator": r.generator, "label": r.label,
                 "width": r.width, "height": r.height}
                for r in self.too_small
            ],
            "duplicates": {
                "across_splits_pairs": self.cross_split_duplicate_pairs,
                "within_split_copies": self.within_split_duplicates,
                "groups": [
                    {"sha256": g.sha256, "labels_differ": g.labels_differ,
                     "files": [{"split": s, "label": lab, "path": p} for s, lab, p in g.files]}
                    for g in self.duplicates
                ],
            },
            "leakage_warnings": leakage_warnings(self) + probe_warnings(self),
            "metadata_probe": {"auroc": dict(self.probe), "equalizer": self.equalizer or None,
                               "features": list(PROBE_FEATURES), "folds": PROBE_FOLDS,
                               "shares": {state: dict(v) for state, v in self.probe_shares.items()}},
        }

    def format_table(self, max_bad_fraction: float | None = None) -> str:
        """A readable text report: per-group table, common sizes, bad files, duplicates and leakage warnings."""
        lines = [
            f"Data report: {self.root or '(splits)'}: {self.n_images} images, scanned in {self.seconds:.1f} s",
        ]
        if self.check:
            lines.append(f"Check: {self.check}")
        if not self.checked:
            lines.append("NOT CHECKED: no file was read, so unreadable, too small and duplicate files are unknown")
        lines.append("")
        header = ("split", "generator", "class", "images", "usable", "unreadable", "too_small",
                  "formats", "short side (px)", "JPEG quality")
        rows = []
        for (split, gen, label), recs in self.groups().items():
            c = self.group_counts(recs)
            h = self._derived()["hist"][(split, gen, label)]
            rows.append((split, gen, CLASS_NAMES[label], c["images"], c["usable"], c["unreadable"], c["too_small"],
                         shares(h.formats, 2), shares(h.short_side, 2), _quality_summary(h.jpeg_quality)))
        lines += _columns(header, rows)
        lines += ["", "Most common sizes (usable images, all splits):"]
        for label, name in enumerate(CLASS_NAMES):
            lines.append(f"  {name}: {shares(self.histograms(label=label).sizes, 3)}")

        unreadable, small = self.unreadable, self.too_small
        lines += ["", f"Unreadable files: {len(unreadable)}"
                  + (f" ({reason_counts(unreadable)})" if unreadable else "")]
        lines += [f"  {r.reason:<20} {r.path}" + (f"  ({r.detail})" if r.detail else "")
                  for r in unreadable[:LIST_LIMIT]]
        lines += _more(len(unreadable))
        lines += [f"Smaller than {self.min_size} px: {len(small)}" if self.min_size
                  else "Smaller than the crop: not checked (images are resized before cropping)"]
        lines += [f"  {r.width}x{r.height:<12} {r.path}" for r in small[:LIST_LIMIT]]
        lines += _more(len(small))
        links = self.skipped_links
        lines += [f"Symlinks not followed (not read): {len(links)}"
                  + (f" ({', '.join(f'{r}: {n}' for r, n in Counter(s.reason for s in links).most_common())}; "
                     "data.follow_symlinks=true follows links out of the dataset)" if links else "")]
        lines += [f"  {s.reason:<24} {s.path} -> {s.target}" for s in links[:LIST_LIMIT]]
        lines += _more(len(links))

        cross = [g for g in self.duplicates if len(g.splits) > 1]
        lines += ["", f"Duplicates across splits{' (among the sampled files)' if self.sampled else ''}: "
                  f"{self.cross_split_duplicate_pairs} pair(s) in {len(cross)} group(s)"
                  f" (copies within a split: {self.within_split_duplicates})"]
        for g in cross[:LIST_LIMIT]:
            files = " | ".join(f"{s}/{CLASS_NAMES[lab]}: {p}" for s, lab, p in g.files)
            lines.append(f"  {g.sha256[:10]}  {files}" + ("  [LABELS DIFFER]" if g.labels_differ else ""))
        lines += _more(len(cross))

        warns = leakage_warnings(self) + probe_warnings(self)
        after = f" (after the equalizer {self.equalizer})" if self.equalized is not None else ""
        lines += ["", f"Leakage warnings{after}: {len(warns) or 'none'}"] + [f"  - {w}" for w in warns]
        if self.probe:
            probe = ", ".join(f"{state} {value:.3f}" for state, value in self.probe.items())
            lines += [f"Metadata probe AUROC ({', '.join(PROBE_FEATURES)}; logistic regression, stratified "
                      f"{PROBE_FOLDS}-fold; 0.5 = no leak, 1.0 = the metadata alone give the label): {probe}"]
            for state, decision in self.probe_shares.items():
                if decision:
                    ranked = sorted(decision.items(), key=lambda kv: -kv[1])
                    lines.append(f"  share of the {state} probe's decision (normalised |standardised coefficient| "
                                 f"per feature family): " + ", ".join(f"{f} {v:.2f}" for f, v in ranked if v >= 0.005))
        limit = DEFAULT_MAX_BAD_FRACTION if max_bad_fraction is None else max_bad_fraction
        empty = self.empty_classes()
        verdict = "OK" if self.bad_fraction <= limit and not empty else "TOO MANY: training stops"
        estimate = (f", an estimate from a stratified sample of {self.n_images} of {self.population} files"
                    if self.sampled else "")
        lines += ["", f"Unusable files: {len(self.bad_files)} of {self.n_images} ({100 * self.bad_fraction:.2f}%"
                      f"{estimate}), limit data.max_bad_fraction={limit}: {verdict}"]
        lines += [f"  - {p}" for p in empty]
        return "\n".join(lines)


def _quality_summary(counter: Counter) -> str:
    if not counter:
        return "-"
    values = np.repeat(list(counter.keys()), list(counter.values()))
    lo, hi = int(values.min()), int(values.max())
    return f"{int(np.median(values))} (median)" + (f", {lo}-{hi}" if lo != hi else "")


def _unusable(records: list[FileRecord]) -> str:
    return f"all {len(records)} files are unreadable or too small" if records else "no files"


def reason_counts(records: list[FileRecord]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in Counter(r.reason for r in records).most_common())


def _more(n: int) -> list[str]:
    return [f"  ... and {n - LIST_LIMIT} more (all listed in data_report.json)"] if n > LIST_LIMIT else []


def _columns(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(header))]
    return ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()
            for row in cells]


def write_report(report: DataReport, out_dir: str | Path, max_bad_fraction: float | None = None,
                 table: str | None = None) -> tuple[Path, Path]:
    """Write ``data_report.json`` and ``data_report.txt`` into ``out_dir``; return their paths. ``table``: the
    text report when the caller has it already (``report.format_table(max_bad_fraction)``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, txt_path = out_dir / "data_report.json", out_dir / "data_report.txt"
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    txt_path.write_text((report.format_table(max_bad_fraction) if table is None else table) + "\n")
    return json_path, txt_path


DATA_STATS_FILE = "data_stats.json"


def size_statistics(report: DataReport, split: str = "train") -> dict[str, Any]:
    """Median, min and max width and height of the readable images of ``split``: the detector's input domain."""
    records = [r for r in report.records if r.split == split and r.readable]
    if not records:
        return {"split": split, "n_images": 0}
    widths = np.array([r.width for r in records], dtype=float)
    heights = np.array([r.height for r in records], dtype=float)
    stats: dict[str, Any] = {"split": split, "n_images": len(records)}
    for name, values in (("width", widths), ("height", heights)):
        stats.update({f"{name}_median": float(np.median(values)), f"{name}_min": int(values.min()),
                      f"{name}_max": int(values.max())})
    return stats


def write_data_stats(report: DataReport, out_dir: str | Path, preprocessing: Mapping[str, Any] | None = None) -> Path:
    """``data_stats.json`` in ``out_dir``: :func:`size_statistics` of the train split and the preprocessing
    sizes; ``detect`` compares its inputs with it."""
    path = Path(out_dir) / DATA_STATS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**size_statistics(report), **dict(preprocessing or {})}, indent=2))
    return path
