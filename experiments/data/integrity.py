"""Checksummed dataset manifests: what a tree held when it was checked or packed, and how a copy differs.

A manifest is a CSV with one row per image: ``relpath,size,sha256,label,generator,split`` (the path relative
to ``data.root``, POSIX separators). ``task=check_data`` writes one into its report folder and ``task=pack``
one inside the pack; ``data.verify=<manifest>`` compares a tree with it (:func:`verify`) and lists the
missing, changed (size or SHA-256) and extra files: the partial or corrupted downloads that large benchmarks
(GenImage, AIGCDetectBenchmark, DRCT) are known for. Files are hashed in parallel processes, one per core
(SHA-256, FIPS 180-4, through :mod:`hashlib`).
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from experiments.data.audit.inspection import CONTENT_HASH
from experiments.data.layouts import Sample
from experiments.errors import UserError

MANIFEST_NAME = "manifest.csv"
COLUMNS = ("relpath", "size", "sha256", "label", "generator", "split")
#: how many paths of each kind an error message lists.
SHOWN = 10
#: files hashed per task handed to a process.
HASH_BATCH = 64


class ManifestMismatch(UserError, ValueError):
    """The tree differs from the manifest it was verified against."""


@dataclass(frozen=True)
class Entry:
    """One manifest row."""

    relpath: str
    size: int
    sha256: str
    label: int
    generator: str
    split: str


def file_digest(path: str | Path) -> tuple[int, str]:
    """``(size in bytes, content hash)`` of ``path`` (the data check's
    :data:`~experiments.data.audit.inspection.CONTENT_HASH`, streamed); ``(-1, "")`` when it cannot be read."""
    digest = hashlib.new(CONTENT_HASH)
    size = 0
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    except OSError:
        return -1, ""
    return size, digest.hexdigest()


def _digests(paths: Sequence[str]) -> list[tuple[int, str]]:
    return [file_digest(p) for p in paths]


def default_workers() -> int:
    """One hashing process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def digests(paths: Sequence[str], workers: int | None = None) -> list[tuple[int, str]]:
    """:func:`file_digest` of every path, in order, hashed by ``workers`` processes (None = one per core)."""
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(paths) <= HASH_BATCH:
        return _digests(paths)
    batches = [paths[i:i + HASH_BATCH] for i in range(0, len(paths), HASH_BATCH)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [d for batch in pool.map(_digests, batches) for d in batch]


def build_manifest(splits: dict[str, Sequence[Sample]], workers: int | None = None,
                   known: Mapping[str, tuple[int, str]] | None = None) -> list[Entry]:
    """The manifest rows of every sample of ``splits`` (split order kept), hashed in parallel.

    ``known``: ``{path: (size, content hash)}`` already computed in this launch (the data check's records,
    :meth:`~experiments.data.audit.report.DataReport.content_digests`): those files are not read again, so the
    check and its manifest hash each file once."""
    pairs = [(split, s) for split, samples in splits.items() for s in samples]
    known = known or {}
    todo = [s.path for _, s in pairs if s.path not in known]
    if todo:
        known = {**known, **dict(zip(todo, digests(todo, workers)))}
    found = [known[s.path] for _, s in pairs]
    return [Entry(s.split_name, size, sha, int(s.label), s.generator, split)
            for (split, s), (size, sha) in zip(pairs, found)]


def write_manifest(entries: Iterable[Entry], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for e in entries:
            writer.writerow([e.relpath, e.size, e.sha256, e.label, e.generator, e.split])
    return path


def read_manifest(path: str | Path) -> list[Entry]:
    """The rows of the manifest ``path``; a clear error when it is missing or lacks a column."""
    path = Path(path)
    if not path.is_file():
        raise ManifestMismatch(f"data.verify={path}: no such manifest. task=check_data and task=pack write one "
                               f"({MANIFEST_NAME} in their output folder).")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestMismatch(f"{path} is not a dataset manifest: its header lacks {missing} "
                                   f"(expected {','.join(COLUMNS)})")
        return [Entry(r["relpath"], int(r["size"]), r["sha256"], int(r["label"]), r["generator"], r["split"])
                for r in reader]


@dataclass
class Verification:
    """How a tree differs from a manifest: relative paths, sorted."""

    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    def describe(self, manifest: str | Path) -> str:
        if self.ok:
            return f"all {self.checked} files match {manifest}"
        lines = [f"the data differs from {manifest}: {len(self.missing)} missing, {len(self.changed)} changed "
                 f"(size or sha256), {len(self.extra)} extra file(s)"]
        for kind, names in (("missing", self.missing), ("changed", self.changed), ("extra", self.extra)):
            lines += [f"  {kind}: {n}" for n in names[:SHOWN]]
            if len(names) > SHOWN:
                lines.append(f"  {kind}: ... (+{len(names) - SHOWN} more)")
        return "\n".join(lines)


def compare(expected: Sequence[Entry], found: Sequence[Entry]) -> Verification:
    """Missing (in ``expected`` only), changed (size or SHA-256 differ) and extra (in ``found`` only) paths."""
    want = {e.relpath: e for e in expected}
    have = {e.relpath: e for e in found}
    changed = [p for p in want.keys() & have.keys()
               if (want[p].size, want[p].sha256) != (have[p].size, have[p].sha256)]
    return Verification(missing=sorted(want.keys() - have.keys()), changed=sorted(changed),
                        extra=sorted(have.keys() - want.keys()), checked=len(want))


def verify(found: Sequence[Entry], manifest: str | Path) -> Verification:
    """Compare the rows ``found`` (this tree's :func:`build_manifest`) with the manifest file; raise
    :class:`ManifestMismatch` listing the missing, changed and extra files when any differ."""
    result = compare(read_manifest(manifest), found)
    if not result.ok:
        raise ManifestMismatch(result.describe(manifest) + "\nRe-download or restore those files, then check "
                               "again (or write a new manifest with task=check_data if the change is intended).")
    return result
