"""On-disk block cache: fetched price blocks kept as raw ``.npy`` files.

Why raw ``.npy``: they open with ``mmap_mode="r"`` in no time, so a second scan of the
same data does no parsing at all, and worker processes read just their own columns
straight from the page cache instead of receiving pickled arrays. An entry is written to
a temporary folder and renamed into place, so a reader never sees half an entry; the
oldest entries beyond ``max_entries`` are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from technic.engine.block import PRICE_FIELDS, PriceBlock

_META = "meta.json"


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


class BlockCache:
    """A folder of entries named by ``cache_key``."""

    def __init__(self, root: Path, max_entries: int = 16) -> None:
        self.root = Path(root)
        self.max_entries = max_entries

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        entry = self.path(key)
        if (entry / _META).is_file():
            os.utime(entry)
            return entry
        return None

    def put(self, key: str, block: PriceBlock, failures: dict[str, str]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            write_block(staging, block, failures)
            try:
                staging.rename(self.path(key))
            except OSError:
                shutil.rmtree(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._evict()
        return self.path(key)

    def _evict(self) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[self.max_entries :]:
            shutil.rmtree(stale, ignore_errors=True)
