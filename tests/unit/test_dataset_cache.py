"""The worker's dataset cache: one download per hash, bounded in bytes, least recently used out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from workers.dataset_cache import DatasetCache


def filler(data: bytes, calls: list[str]) -> Callable[[IO[bytes]], None]:
    def fill(out: IO[bytes]) -> None:
        calls.append("fill")
        out.write(data)
    return fill


def read(cache: DatasetCache, key: str, data: bytes, calls: list[str]) -> bytes:
    with cache.open(key, filler(data, calls)) as f:
        return f.read()


def age(cache: DatasetCache, key: str, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(cache.path(key), (stamp, stamp))


def test_a_key_is_filled_once_then_served_from_disk(tmp_path: Path) -> None:
    cache, calls = DatasetCache(tmp_path, 10_000), list[str]()
    assert read(cache, "aa", b"payload", calls) == b"payload"
    assert read(cache, "aa", b"other", calls) == b"payload"
    assert calls == ["fill"]


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    cache, calls = DatasetCache(tmp_path, 250), list[str]()
    read(cache, "aa", bytes(100), calls)
    read(cache, "bb", bytes(100), calls)
    age(cache, "aa", 30)
    age(cache, "bb", 20)
    read(cache, "aa", bytes(100), calls)  # a hit makes aa the most recently used
    read(cache, "cc", bytes(100), calls)
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == ["aa", "cc"]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npz")) <= 250


def test_an_entry_larger_than_the_bound_is_still_served(tmp_path: Path) -> None:
    cache, calls = DatasetCache(tmp_path, 50), list[str]()
    read(cache, "aa", bytes(40), calls)
    assert read(cache, "bb", bytes(80), calls) == bytes(80)
    assert [p.stem for p in tmp_path.glob("*.npz")] == ["bb"]


def test_a_failed_download_leaves_nothing(tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path, 1000)

    def broken(out: IO[bytes]) -> None:
        out.write(b"half")
        raise OSError("connection lost")

    with pytest.raises(OSError):
        cache.open("aa", broken)
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*.part"))
    assert read(cache, "aa", b"whole", []) == b"whole"


def test_an_open_entry_survives_its_eviction(tmp_path: Path) -> None:
    cache, calls = DatasetCache(tmp_path, 150), list[str]()
    handle = cache.open("aa", filler(b"x" * 100, calls))
    age(cache, "aa", 60)
    read(cache, "bb", bytes(100), calls)
    assert not cache.path("aa").exists()
    assert handle.read() == b"x" * 100
    handle.close()


def test_keys_are_hashes_not_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DatasetCache(tmp_path, 100).open("../etc", filler(b"", []))
