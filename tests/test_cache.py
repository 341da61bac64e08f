"""The block cache on a real disk: bounded by bytes, least recently used first, never
pulling an entry from under a scan that reads it, in this process or another."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
from technic.engine.block import PRICE_FIELDS, PriceBlock
from technic.engine.cache import BlockCache, read_block

ROOT = Path(__file__).resolve().parents[1]


def make_block(seed: int, bars: int = 200, symbols: int = 50) -> PriceBlock:
    rng = np.random.default_rng(seed)
    dates = np.busday_offset("2020-01-01", np.arange(bars), roll="forward")
    names = np.array([f"S{i:03d}" for i in range(symbols)], dtype=object)
    fields = {name: rng.uniform(1, 100, (bars, symbols)) for name in PRICE_FIELDS}
    return PriceBlock(dates=dates, symbols=names, **fields)


def entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if not p.name.startswith(".")}


def disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def entry_bytes(tmp_path: Path) -> int:
    scratch = BlockCache(tmp_path / "scratch")
    scratch.put("x", make_block(0), {}).release()
    return disk_bytes(tmp_path / "scratch")


def test_stays_within_its_bound_evicting_the_least_recently_used(tmp_path: Path) -> None:
    size = entry_bytes(tmp_path)
    cache = BlockCache(tmp_path / "cache", max_bytes=int(2.5 * size))
    cache.put("a", make_block(1), {}).release()
    time.sleep(0.01)
    cache.put("b", make_block(2), {}).release()
    time.sleep(0.01)
    hit = cache.get("a")  # a is now used more recently than b
    assert hit is not None
    hit.release()
    time.sleep(0.01)
    cache.put("c", make_block(3), {}).release()
    assert entries(cache.root) == {"a", "c"}
    assert disk_bytes(cache.root) <= cache.max_bytes
    assert cache.get("b") is None
    again = cache.get("a")
    assert again is not None
    with again:
        block, _ = read_block(again.path)
        np.testing.assert_array_equal(block.close, make_block(1).close)


def test_an_entry_in_use_is_kept_until_released(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, max_bytes=0)
    first = cache.put("a", make_block(1), {"X": "no price data"})
    second = cache.put("b", make_block(2), {})
    assert entries(tmp_path) == {"a", "b"}  # over the bound, but both are being read
    block, failures = read_block(first.path)
    np.testing.assert_array_equal(block.volume, make_block(1).volume)
    assert failures == {"X": "no price data"}
    first.release()
    assert entries(tmp_path) == {"b"}
    second.release()
    assert entries(tmp_path) == set()
    assert disk_bytes(tmp_path) == 0


def test_an_entry_read_by_another_process_is_kept_until_that_process_dies(
    tmp_path: Path,
) -> None:
    BlockCache(tmp_path).put("a", make_block(1), {}).release()
    reader = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from technic.engine.cache import BlockCache
        lease = BlockCache(Path({str(tmp_path)!r})).get("a")
        print("held" if lease else "missing", flush=True)
        time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "held"
            cache = BlockCache(tmp_path, max_bytes=0)
            cache.evict()
            assert entries(tmp_path) == {"a"}
            process.kill()
            process.wait()
            cache.evict()
            assert entries(tmp_path) == set()
        finally:
            if process.poll() is None:
                process.kill()


def test_writers_of_one_key_at_once_share_one_complete_entry(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path / "cache", max_bytes=10 * entry_bytes(tmp_path))
    block = make_block(5)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with cache.put("same", block, {}) as lease:
                read_block(lease.path)
                paths.append(lease.path)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(paths) == {cache.root / "same"}
    assert [p.name for p in cache.root.iterdir()] == ["same"]  # no staging left over


def test_leftovers_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path, max_bytes=1 << 30)
    abandoned = tmp_path / ".deadbeef.abc123"
    abandoned.mkdir()
    (abandoned / "close.npy").write_bytes(b"\0" * 1000)
    hour_ago = time.time() - 3600
    os.utime(abandoned, (hour_ago, hour_ago))
    in_progress = tmp_path / ".cafe.def456"
    in_progress.mkdir()
    cache.evict()
    assert not abandoned.exists()
    assert in_progress.exists()
