"""The per-file results of the data check, kept between runs in one SQLite database per dataset.

A row is keyed by the file's path relative to the dataset root, its size and its modification time (ns), so
the same dataset mounted at another path (or copied with its times kept, ``rsync -a``) reuses the results, and a
rewritten file is inspected again. SQLite (the Python standard library's ``sqlite3``) keeps millions of rows in
one file, looks them up by primary key, and lets concurrent jobs of a sweep read while one writes (WAL mode).
A store that cannot be opened or written only costs a re-scan, with a warning.

Besides the rows of files, the store keeps results computed over many files (the metadata probe): JSON values
keyed by a digest of their inputs (:meth:`CheckStore.result`, :meth:`CheckStore.put_result`), so a check whose
files are all stored redoes none of its work. It also keeps the last few whole scans (:meth:`CheckStore.scan`):
the fields of every file of one list of keys, in its order, under a digest of that list (:func:`scan_key`). A
check of an unchanged dataset (every path, size and mtime as before) then reads one value instead of a row per
file; any other list of keys is answered row by row, as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import sqlite3
from array import array
from pathlib import Path
from typing import Any, Iterable, Sequence

from experiments.data.audit.inspection import CONTENT_FIELDS

log = logging.getLogger(__name__)

#: bump when what a row means changes (a new field, another hash)
STORE_VERSION = 4
#: the newest results kept (a sweep over seeds or equalizers adds one each); older ones are computed again
KEEP_RESULTS = 64
_RESULTS = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT)"
#: the newest whole scans kept (one per list of keys: a dataset, a sample of it); older ones are read row by row
KEEP_SCANS = 4
_SCANS = "CREATE TABLE IF NOT EXISTS scans (key TEXT PRIMARY KEY, fields BLOB)"
#: rows per ``IN (...)`` query (below SQLite's default limit of bound variables)
LOOKUP_BATCH = 900
#: read the whole table in one pass when the keys asked for are at least 1/SCAN_ABOVE of its rows
SCAN_ABOVE = 4

_COLUMNS = ", ".join(CONTENT_FIELDS)
_SCHEMA = (f"CREATE TABLE IF NOT EXISTS files (relpath TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
           f"{', '.join(f + ' ' + ('INTEGER' if f in ('width', 'height', 'jpeg_quality', 'n_bytes', 'exif', 'bit_depth') else 'TEXT') for f in CONTENT_FIELDS)})")

#: a file's key: ``(path relative to the dataset root, size in bytes, mtime in ns)``; size -1 = cannot stat
FileKey = tuple[str, int, int]


def file_key(path: str, relpath: str) -> FileKey:
    """``(relpath, size, mtime_ns)`` of the file at ``path`` (size -1 when it cannot be stat-ed)."""
    return file_keys([path], [relpath])[0]


def file_keys(paths: Sequence[str], relpaths: Sequence[str]) -> list[FileKey]:
    """The key of every path (:data:`FileKey`), in one loop (a check of a stored dataset spends most of its time
    here).
    Where the system allows it, each file is stat-ed relative to its open folder (``dir_fd``), so the kernel
    resolves the folder once per run of files in it, not once per file."""
    stat, keys = os.stat, []
    relative = stat in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
    folder, fd = None, None
    try:
        for path, relpath in zip(paths, relpaths):
            if relative:
                head, sep, name = path.rpartition(os.sep)
                head = head or (sep or ".")  # "/x.png" lies in "/", "x.png" in the working directory
                if head != folder:
                    if fd is not None:
                        os.close(fd)
                    folder, fd = head, _open_folder(head)
            try:
                st = stat(name, dir_fd=fd) if relative and fd is not None and name else stat(path)
            except OSError:
                keys.append((relpath, -1, 0))
            else:
                keys.append((relpath, st.st_size, st.st_mtime_ns))
    finally:
        if fd is not None:
            os.close(fd)
    return keys


def _open_folder(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def scan_key(keys: Sequence[FileKey]) -> str:
    """A digest (SHA-256) of a list of keys, in order: equal only for the same files, sizes and mtimes."""
    if not keys:
        return hashlib.sha256(b"").hexdigest()
    relpaths, sizes, mtimes = zip(*keys)
    digest = hashlib.sha256("\0".join(relpaths).encode("utf-8", "surrogateescape"))
    digest.update(array("q", sizes).tobytes())
    digest.update(array("q", mtimes).tobytes())
    return digest.hexdigest()


class _PlainUnpickler(pickle.Unpickler):
    """Reads pickles of plain values only (lists, tuples, strings, numbers, None): it refuses every class and
    function, so a tampered store cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"the store holds {module}.{name}; only plain values are read")


class CheckStore:
    """The per-file results of one dataset at ``path`` (``<paths.cache_dir>/data_checks/<dataset>.sqlite``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            version = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if version is None or int(version[0]) != STORE_VERSION:
                db.execute("DROP TABLE IF EXISTS files")
                db.execute("DROP TABLE IF EXISTS results")
                db.execute("DROP TABLE IF EXISTS scans")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (str(STORE_VERSION),))
            db.execute(_SCHEMA)
            db.execute(_RESULTS)
            db.execute(_SCANS)
            db.commit()
            self._db = db
        return self._db

    def lookup(self, keys: Sequence[FileKey]) -> list[tuple | None]:
        """The stored :data:`~experiments.data.audit.inspection.CONTENT_FIELDS` of each key (None where the file
        is not stored, or was stored with another size or mtime), in the order of ``keys``."""
        found: dict[str, tuple] = {}
        try:
            db = self._connect()
            names = list(dict.fromkeys(k[0] for k in keys))
            stored = db.execute("SELECT MAX(rowid) FROM files").fetchone()[0] or 0
            select = f"SELECT relpath, size, mtime_ns, {_COLUMNS} FROM files"
            if len(names) * SCAN_ABOVE >= stored:  # most of the table: one pass beats many index look-ups
                found = {r[0]: r[1:] for r in db.execute(select)}  # rows not asked for are never looked up
            else:
                for i in range(0, len(names), LOOKUP_BATCH):
                    batch = names[i:i + LOOKUP_BATCH]
                    rows = db.execute(f"{select} WHERE relpath IN ({','.join('?' * len(batch))})", batch)
                    found.update((r[0], r[1:]) for r in rows)
        except (sqlite3.Error, OSError) as err:
            log.warning("data check: cannot read the store %s (%s); the files are inspected again", self.path, err)
            return [None] * len(keys)
        out: list[tuple | None] = []
        for relpath, size, mtime in keys:
            row = found.get(relpath)
            out.append(row[2:] if row is not None and size >= 0 and row[0] == size and row[1] == mtime else None)
        return out

    def put(self, keys: Iterable[FileKey], fields: Iterable[tuple]) -> None:
        """Store the results of files (keys with size -1, which could not be stat-ed, are not stored)."""
        rows = [(*k, *f) for k, f in zip(keys, fields) if k[1] >= 0]
        try:
            db = self._connect()
            with db:
                db.executemany(f"INSERT OR REPLACE INTO files VALUES ({','.join('?' * (3 + len(CONTENT_FIELDS)))})",
                               rows)
        except (sqlite3.Error, OSError) as err:
            log.warning("data check: cannot write the store %s (%s); the next run inspects these files again",
                        self.path, err)

    def scan(self, keys: Sequence[FileKey]) -> list[list] | None:
        """The fields of every key, in order, when :meth:`put_scan` stored this exact list of keys (else None)."""
        try:
            row = self._connect().execute("SELECT fields FROM scans WHERE key=?", (scan_key(keys),)).fetchone()
            fields = None if row is None else _PlainUnpickler(io.BytesIO(row[0])).load()
        except (sqlite3.Error, OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
            log.warning("data check: cannot read the store %s (%s); the files are looked up one by one",
                        self.path, err)
            return None
        return fields if isinstance(fields, list) and len(fields) == len(keys) else None

    def put_scan(self, keys: Sequence[FileKey], fields: Sequence[tuple]) -> None:
        """Keep the fields of a whole list of keys (not when a file could not be stat-ed: it is never stored)."""
        if any(k[1] < 0 for k in keys):
            return
        try:
            db = self._connect()
            with db:
                value = pickle.dumps(list(fields), protocol=pickle.HIGHEST_PROTOCOL)
                db.execute("INSERT OR REPLACE INTO scans VALUES (?, ?)", (scan_key(keys), value))
                db.execute("DELETE FROM scans WHERE rowid <= (SELECT MAX(rowid) FROM scans) - ?", (KEEP_SCANS,))
        except (sqlite3.Error, OSError, pickle.PicklingError) as err:
            log.warning("data check: cannot write the store %s (%s); the next run looks the files up one by one",
                        self.path, err)

    def result(self, key: str) -> Any | None:
        """The JSON value stored under ``key`` by :meth:`put_result` (None when there is none)."""
        try:
            row = self._connect().execute("SELECT value FROM results WHERE key=?", (key,)).fetchone()
            return None if row is None else json.loads(row[0])
        except (sqlite3.Error, OSError, ValueError) as err:
            log.warning("data check: cannot read the store %s (%s); the result is computed again", self.path, err)
            return None

    def put_result(self, key: str, value: Any) -> None:
        """Keep the JSON-ready ``value`` under ``key`` (a digest of everything it was computed from)."""
        try:
            db = self._connect()
            with db:
                db.execute("INSERT OR REPLACE INTO results VALUES (?, ?)", (key, json.dumps(value)))
                db.execute("DELETE FROM results WHERE rowid <= (SELECT MAX(rowid) FROM results) - ?", (KEEP_RESULTS,))
        except (sqlite3.Error, OSError, TypeError, ValueError) as err:
            log.warning("data check: cannot write the store %s (%s); the next run computes it again", self.path, err)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "CheckStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
