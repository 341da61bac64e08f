"""On-disk block cache: fetched price blocks kept as raw ``.npy`` files.

Why raw ``.npy``: they open with ``mmap_mode="r"`` in no time, so a second scan of the
same data does no parsing at all, and worker processes read just their own columns
straight from the page cache instead of receiving pickled arrays.

The cache is bounded by bytes (``max_bytes``): after every write and every release, the
least recently used entries are removed until the total fits. "Used" is the entry
folder's modification time, set when it is written and touched on every hit.

Several scans read the cache at once, in this process and in others sharing the data
directory (a second server, ``technic scan``), and a scan's workers open the entry's files
by path for every chunk, so an entry must not vanish while a scan reads it:

- A reader holds a ``CacheLease``: a shared ``flock`` on the entry's ``.lock`` file, taken
  before it reads and kept until the scan is done. Eviction takes the lock exclusively and
  without waiting; an entry it cannot lock is in use and is skipped (so while scans run the
  cache can exceed its bound by the blocks they read). ``flock`` locks die with their
  process, so a killed scan never pins an entry.
- An entry is written to a hidden staging folder and renamed into place, and removed by
  renaming it to a hidden name first: a reader sees a whole entry or none. A reader that
  locked a lock file which was renamed away meanwhile notices (the path no longer leads to
  the file it holds) and treats the entry as missing.
- Hidden folders left by a killed writer or remover are deleted once they are an hour old
  and nobody holds their lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from technic.engine.block import PRICE_FIELDS, PriceBlock

_META = "meta.json"
_LOCK = ".lock"
ABANDONED_AFTER_S = 3600.0
PUT_ATTEMPTS = 3


def cache_key(identity: str, symbols: Sequence[str]) -> str:
    digest = hashlib.sha256(identity.encode())
    digest.update("\n".join(symbols).encode())
    return digest.hexdigest()[:32]


def write_block(directory: Path, block: PriceBlock, failures: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "dates.npy", block.dates.astype("datetime64[D]"))
    np.save(directory / "symbols.npy", block.symbols.astype(str))
    for name in PRICE_FIELDS:
        np.save(directory / f"{name}.npy", np.ascontiguousarray(block.field(name), np.float64))
    (directory / _META).write_text(json.dumps({"failures": failures}))


def read_block(directory: Path) -> tuple[PriceBlock, dict[str, str]]:
    """Memory-map an entry; nothing is read from disk until a slice is used."""
    fields = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in PRICE_FIELDS}
    block = PriceBlock(
        dates=np.load(directory / "dates.npy"),
        symbols=np.load(directory / "symbols.npy").astype(object),
        **fields,
    )
    failures = json.loads((directory / _META).read_text())["failures"]
    return block, failures


class CacheLease:
    """An entry held for reading: it stays on disk until ``release`` (or the ``with`` end)."""

    def __init__(self, cache: BlockCache, path: Path, lock_fd: int) -> None:
        self.cache = cache
        self.path = path
        self._lock_fd: int | None = lock_fd

    def release(self) -> None:
        """Let the entry go; it now counts as just used, and the cache is trimmed."""
        if self._lock_fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)
        os.close(self._lock_fd)
        self._lock_fd = None
        self.cache.evict()

    def __enter__(self) -> CacheLease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _lock_in_place(entry: Path, lock_fd: int) -> bool:
    """Whether the lock file held by ``lock_fd`` is still the one at ``entry``."""
    try:
        here = os.stat(entry / _LOCK)
    except FileNotFoundError:
        return False
    held = os.fstat(lock_fd)
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _size_bytes(entry: Path) -> int:
    return sum(f.stat().st_size for f in entry.iterdir())


class BlockCache:
    """A folder of entries named by ``cache_key``, at most ``max_bytes`` (None: unbounded)
    of them beyond those in use."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> CacheLease | None:
        """The entry, held until the lease is released; None if there is no whole entry."""
        entry = self.path(key)
        try:
            lock_fd = os.open(entry / _LOCK, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)  # waits only while a remover renames it
            if not _lock_in_place(entry, lock_fd) or not (entry / _META).is_file():
                os.close(lock_fd)
                return None
            os.utime(entry)
        except BaseException:
            os.close(lock_fd)
            raise
        return CacheLease(self, entry, lock_fd)

    def put(self, key: str, block: PriceBlock, failures: dict[str, str]) -> CacheLease:
        """Write an entry and hold it; if another writer put it there first, hold theirs."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        lock_fd = os.open(staging / _LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            write_block(staging, block, failures)
            lease = self._place(key, staging, lock_fd)
        except BaseException:
            os.close(lock_fd)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.evict()
        return lease

    def _place(self, key: str, staging: Path, lock_fd: int) -> CacheLease:
        entry = self.path(key)
        for _ in range(PUT_ATTEMPTS):
            try:
                staging.rename(entry)
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            else:
                os.utime(entry)
                return CacheLease(self, entry, lock_fd)
            theirs = self.get(key)
            if theirs is not None:
                os.close(lock_fd)
                shutil.rmtree(staging, ignore_errors=True)
                return theirs
            self._remove(entry)  # there, but not a whole entry: replace it
        raise OSError(errno.EBUSY, f"cannot put cache entry {key} in place", str(entry))

    def evict(self) -> None:
        """Remove least recently used entries not in use until the cache fits ``max_bytes``."""
        if self.max_bytes is None or not self.root.is_dir():
            return
        entries: list[tuple[float, int, Path]] = []
        for path in self.root.iterdir():
            if path.name.startswith("."):
                self._remove_if_abandoned(path)
                continue
            try:
                entries.append((path.stat().st_mtime, _size_bytes(path), path))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed by another process meanwhile
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda entry: entry[0]):
            if total <= self.max_bytes:
                return
            if self._remove(path):
                total -= size

    def _remove(self, entry: Path) -> bool:
        """Remove an entry nobody holds; False if it is in use."""
        try:
            lock_fd: int | None = os.open(entry / _LOCK, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            lock_fd = None  # not a whole entry (or already going): nobody can hold it
        trash = self.root / f".trash-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            if lock_fd is not None:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                if not _lock_in_place(entry, lock_fd):
                    return True  # another process removed it meanwhile
            try:
                entry.rename(trash)
            except FileNotFoundError:
                return True
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _remove_if_abandoned(self, hidden: Path) -> None:
        """Delete a staging or trash folder whose writer or remover died."""
        try:
            if time.time() - hidden.stat().st_mtime < ABANDONED_AFTER_S:
                return
            lock_fd: int | None = os.open(hidden / _LOCK, os.O_RDONLY)
        except FileNotFoundError:
            lock_fd = None
        except NotADirectoryError:
            return
        try:
            if lock_fd is not None:
                try:
                    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
            shutil.rmtree(hidden, ignore_errors=True)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
