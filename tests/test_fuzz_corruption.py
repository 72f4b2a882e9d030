"""Seeded corruption fuzzing in CI (small): every damaged store is a clear error, never wrong data.

The larger run and its counts are in docs/integrity.md (``python benchmarks/fuzz_corruption.py``).
"""

import pytest

import stemdask
from benchmarks.fuzz_corruption import MUTATIONS, fuzz, make_store


def _all_clear(counts, manifest: bool) -> None:
    """All 25 cases are clear errors, and the seeded cases cover every kind of damage (deletion only where a
    manifest records the files)."""
    assert counts["clear error"] == 25, counts
    assert {k for k in MUTATIONS if counts[f"mutation {k}"]} == set(MUTATIONS) - (set() if manifest else {"delete"})


@pytest.mark.parametrize("codec", ["blosc-lz4", "blosc", "histogram"])
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "checksums only"])
def test_every_corruption_is_a_clear_error(tmp_path, codec, manifest):
    counts = fuzz(codec, 25, seed=7, manifest=manifest, folder=tmp_path)
    _all_clear(counts, manifest)


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "checksums only"])
def test_every_corruption_read_as_events_is_a_clear_error(tmp_path, manifest):
    """Histogram stores opened as events go through their own shard-index parser and chunk decoder."""
    store, _ = make_store(tmp_path, "histogram", seed=11)
    assert stemdask.open_dataset(store, representation="events").data.name.startswith("histogram-events")
    counts = fuzz("histogram", 25, seed=11, manifest=manifest, folder=tmp_path, representation="events")
    _all_clear(counts, manifest)
