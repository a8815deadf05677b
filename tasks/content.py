"""Content hashes of dataset files, memoised on disk so that a rerun does not read every file again.

An on-disk dataset is identified by what its files hold, not by where they are or what they are called
(:meth:`tasks.base.Dataset.fingerprint`): :func:`file_digests` returns the SHA-256 of each file's bytes, read in
1 MiB chunks.

**The memo.** A file's digest is remembered under its absolute path together with its size, ``mtime_ns``,
``ctime_ns`` and inode, in a small SQLite database: ``$PROBEBENCH_HASH_CACHE`` if set (a file path;
``PROBEBENCH_HASH_CACHE=off`` turns the memo off), else ``~/.cache/probebench/file_hashes.sqlite``. A memoised
digest is used only while all four are unchanged, so a warm run costs one ``stat`` per file and one batched
lookup per 500 files. Any write to a file changes its ``ctime`` (which, unlike ``mtime``, cannot be set back with
``os.utime`` or ``touch -d``), and replacing a file (an editor's save, ``rsync``) gives it a new inode. The
limit: a change that keeps size, ``mtime_ns``, ``ctime_ns`` and inode (a file system that keeps no change time,
or a clock set back) is not seen. A digest is not memoised while its file changed less than
:data:`RACY_SECONDS` ago, since a second write within the same timestamp tick would go unseen.

Several processes (ranks under ``torchrun``) may read and write the memo at once: SQLite's file locks with the
default rollback journal (WAL would need shared memory, which network home folders lack). A memo that cannot be
opened, read or written (a read-only home, a damaged file) never fails a run: files are hashed without it, with
one warning. The path is part of the memo key, never of a digest: a moved dataset costs one cold pass of hashing
and keeps its identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from probebench.core.errors import ProbebenchError

HASH_CACHE_ENV = "PROBEBENCH_HASH_CACHE"
DEFAULT_HASH_CACHE = "~/.cache/probebench/file_hashes.sqlite"
ALGORITHM = "sha256"  # the fastest strong hash in hashlib on CPUs with SHA extensions (blake2b: about half)
RACY_SECONDS = 2.0  # a file changed this recently is hashed but not memoised (coarse file-system clocks)
PROGRESS_MIN_FILES = 200  # a progress bar when more files than this, or more bytes than below, must be read
PROGRESS_MIN_BYTES = 256 << 20
_CHUNK = 1 << 20
_SQL_BATCH = 500  # parameters per SELECT (SQLite's limit is 999 on old builds)
_THREADS_FROM = 32  # files to read before a thread pool pays off (reads and hashing release the GIL)

log = logging.getLogger("probebench")

Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
_memo_in_process: dict[str, tuple[Stat, str]] = {}
_warned: set[str] = set()


def hash_cache_path() -> Path | None:
    """The memo database (``$PROBEBENCH_HASH_CACHE``, default ``~/.cache/probebench/file_hashes.sqlite``), or
    ``None`` when the variable is ``off``."""
    value = os.environ.get(HASH_CACHE_ENV) or DEFAULT_HASH_CACHE
    return None if value.strip().lower() == "off" else Path(value).expanduser()


def hash_file(path: str | Path) -> str:
    """Hex SHA-256 of the bytes of ``path``, streamed (never the whole file in memory)."""
    h = hashlib.new(ALGORITHM)
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(_CHUNK):  # unbuffered: one read per chunk, sized to what the file holds
                h.update(chunk)
    except FileNotFoundError as e:
        raise ProbebenchError(f"Missing file {path}.") from e
    except OSError as e:
        raise ProbebenchError(f"Cannot read {path}: {e}") from e
    return h.hexdigest()


def digest_lines(lines: Iterable[str]) -> str:
    """Hex SHA-256 of newline-terminated ``lines``: one digest for an ordered list of per-item records."""
    h = hashlib.new(ALGORITHM)
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _stat(path: str) -> Stat:
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise ProbebenchError(f"Missing file {path}.") from e
    except OSError as e:
        raise ProbebenchError(f"Cannot read {path}: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ProbebenchError(f"{path} is not a regular file.")
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _warn_once(what: str, db: Path, err: Exception) -> None:
    key = f"{what}:{db}"
    if key not in _warned:
        _warned.add(key)
        log.warning(
            "File-hash memo %s: cannot %s it (%s); hashing without it. Set %s to a writable file, or to 'off'.",
            db,
            what,
            err,
            HASH_CACHE_ENV,
        )


class _Memo:
    """The SQLite memo, opened for one :func:`file_digests` call; every failure turns it off (with a warning)."""

    def __init__(self, db: Path | None):
        self.db, self.conn = db, None
        if db is None:
            return
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS file_hash (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                "ctime_ns INTEGER, inode INTEGER, algorithm TEXT, digest TEXT) WITHOUT ROWID"
            )
        except (OSError, sqlite3.Error) as e:
            self._off("open", e)

    def _off(self, what: str, err: Exception) -> None:
        if self.db is not None:
            _warn_once(what, self.db, err)
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def lookup(self, paths: Sequence[str]) -> dict[str, tuple[Stat, str]]:
        out: dict[str, tuple[Stat, str]] = {}
        if self.conn is None:
            return out
        try:
            for i in range(0, len(paths), _SQL_BATCH):
                chunk = paths[i : i + _SQL_BATCH]
                rows = self.conn.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, digest FROM file_hash "
                    f"WHERE algorithm = ? AND path IN ({','.join('?' * len(chunk))})",
                    (ALGORITHM, *chunk),
                )
                for p, size, mtime, ctime, inode, digest in rows:
                    out[p] = ((size, mtime, ctime, inode), digest)
        except sqlite3.Error as e:
            self._off("read", e)
            return {}
        return out

    def store(self, rows: list[tuple[str, Stat, str]]) -> None:
        if self.conn is None or not rows:
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT OR REPLACE INTO file_hash VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(p, *st, ALGORITHM, d) for p, st, d in rows],
            )
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            self._off("write", e)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def file_digests(
    paths: Sequence[str | Path], *, desc: str = "hash files", progress: bool = True
) -> list[str]:
    """The content digest (hex SHA-256) of each file in ``paths``, in order; a path may repeat.

    Files whose (size, mtime_ns, ctime_ns, inode) match the memo are not read. A missing or unreadable file is
    a :class:`ProbebenchError` naming it. More than :data:`PROGRESS_MIN_FILES` files (or
    :data:`PROGRESS_MIN_BYTES`) to read show a progress bar.
    """
    cwd = os.getcwd()  # absolute keys without os.path.abspath's normalisation (a third of the warm path)
    absolute = [s if os.path.isabs(s) else os.path.join(cwd, s) for s in map(os.fspath, paths)]
    unique = list(dict.fromkeys(absolute))
    stats = {p: _stat(p) for p in unique}
    now = time.time_ns()
    digests: dict[str, str] = {}
    for p in unique:
        hit = _memo_in_process.get(p)
        if hit is not None and hit[0] == stats[p]:
            digests[p] = hit[1]
    memo = _Memo(hash_cache_path()) if len(digests) < len(unique) else _Memo(None)
    try:
        missing = [p for p in unique if p not in digests]
        for p, (st, digest) in memo.lookup(missing).items():
            if st == stats[p]:
                digests[p] = digest
                _memo_in_process[p] = (st, digest)
        todo = [p for p in unique if p not in digests]
        total = sum(stats[p][0] for p in todo)
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"{desc} ({len(todo)} files)",
            disable=not progress or (len(todo) <= PROGRESS_MIN_FILES and total <= PROGRESS_MIN_BYTES),
        )
        racy = int(RACY_SECONDS * 1e9)
        pending: list[tuple[str, Stat, str]] = []

        def done(p: str, digest: str) -> None:
            digests[p] = digest
            bar.update(stats[p][0])
            st = stats[p]
            if max(st[1], st[2]) < now - racy:  # changed long enough ago: safe to remember
                _memo_in_process[p] = (st, digest)
                pending.append((p, st, digest))
                if len(pending) >= 1000:  # an interrupted cold run keeps what it hashed
                    memo.store(pending)
                    pending.clear()

        if len(todo) >= _THREADS_FROM:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                for p, digest in zip(todo, pool.map(hash_file, todo)):
                    done(p, digest)
        else:
            for p in todo:
                done(p, hash_file(p))
        bar.close()
        memo.store(pending)
    finally:
        memo.close()
    return [digests[p] for p in absolute]
