"""Seeded corruption fuzzing of stored chunks: every damaged store must be a clear error, never wrong data.

For a codec, a small counted dataset is saved (several shards, several inner
chunks each); then, case by case, one stored chunk/shard file is damaged in
place — cut at a random length, 1-16 random bytes XOR-ed, deleted, grown by
random bytes, or a run of bytes zeroed — the store is opened and read in full
(dense, or with ``--representation events`` through the reader that decodes
histogram chunks straight to electron events, a read path of its own), and
the file restored. Each case is one of:

* clear error: a stemdask ``FileFormatError`` (``CorruptChunkError``,
  ``MissingChunkError``) whose message names the store;
* crash: any other exception;
* hang: no answer within ``timeout_s``;
* silent wrong output: values returned that differ from the original;
* unchanged: values returned equal to the original (the damage did not matter).

Run: ``python benchmarks/fuzz_corruption.py --cases 2000`` (every codec); the
CI test ``tests/test_fuzz_corruption.py`` runs a small seeded set.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

MUTATIONS = ("truncate", "flip", "delete", "grow", "zero")


class _Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Hang


def make_store(folder: Path, codec: str, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A small counted dataset saved with ``codec`` (4 shards of 4 inner chunks); its path and values."""
    import stemdask

    rng = np.random.default_rng(seed)
    values = rng.poisson(0.8, size=(8, 8, 16, 16)).astype(np.uint16)
    data = stemdask.from_array(values, energy_ev=3e5, scan_step_A=0.5, detector_pixel_mrad=1.0)
    store = stemdask.save(data, folder / f"{codec}.zarr", codec=codec, chunks=(2, 4), shards=(4, 8))
    return Path(store), values


def data_files(store: Path) -> list[Path]:
    """The chunk/shard files of the store's 4-D array."""
    return sorted(p for p in (store / "intensity" / "c").rglob("*") if p.is_file())


def mutate(path: Path, original: bytes, kind: str, rng: np.random.Generator) -> None:
    """Damage ``path`` (whose content is ``original``) in one of the ways of ``MUTATIONS``."""
    if kind == "delete":
        path.unlink()
        return
    data = bytearray(original)
    if kind == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == "flip":
        for at in rng.choice(len(data), size=int(rng.integers(1, 17)), replace=False):
            data[at] ^= int(rng.integers(1, 256))
    elif kind == "grow":
        data += rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == "zero":
        start = int(rng.integers(0, len(data)))
        stop = min(len(data), start + int(rng.integers(1, 64)))
        if not any(data[start:stop]):
            data[start] = 1  # zeroing zeros would change nothing: make it a change
        else:
            data[start:stop] = bytes(stop - start)
    path.write_bytes(bytes(data))


def read_store(store: Path, representation: str) -> np.ndarray:
    """Every value of ``store``'s dataset, read as ``representation`` ("dense", or "events" then made dense)."""
    import stemdask

    if representation == "events":
        from stemdask import events

        return events.to_dense(stemdask.open_dataset(store, representation="events")).values
    return stemdask.open_dataset(store).values


def classify(store: Path, reference: np.ndarray, timeout_s: float, representation: str = "dense") -> str:
    """Open and read ``store``: "clear error", "crash", "hang", "silent wrong output" or "unchanged"."""
    from stemdask.errors import FileFormatError

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        values = read_store(store, representation)
    except _Hang:
        return "hang"
    except FileFormatError as err:
        return "clear error" if str(store) in str(err) else "crash"
    except Exception:
        return "crash"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return "unchanged" if np.array_equal(values, reference) else "silent wrong output"


def fuzz(
    codec: str,
    cases: int,
    *,
    seed: int = 0,
    manifest: bool = True,
    timeout_s: float = 60.0,
    folder: Path | None = None,
    representation: str = "dense",
) -> Counter:
    """Run ``cases`` seeded corruption cases against a store written with ``codec``; count the outcomes.

    ``manifest=False`` removes the store's manifest first (a store written
    before manifests), so cut and grown files must be caught by the shard
    index's and the chunks' checksums alone; deleting a file is then left out
    (without a record, a missing shard is indistinguishable from an empty one).
    ``representation="events"`` reads every case as electron events (for
    ``"histogram"``: each chunk decoded straight to events by
    ``stemdask.events.histogram_store``, which parses the shard index itself).
    """
    import shutil

    kinds = MUTATIONS if manifest else tuple(k for k in MUTATIONS if k != "delete")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        store, reference = make_store(Path(tmp), codec, seed)
        if not manifest:
            shutil.rmtree(store / "stemdask_manifest")
        files = data_files(store)
        pristine = {p: p.read_bytes() for p in files}
        rng = np.random.default_rng(seed)
        counts: Counter = Counter()
        for _ in range(cases):
            path = files[int(rng.integers(len(files)))]
            kind = kinds[int(rng.integers(len(kinds)))]
            mutate(path, pristine[path], kind, rng)
            try:
                counts[classify(store, reference, timeout_s, representation)] += 1
                counts[f"mutation {kind}"] += 1
            finally:
                path.write_bytes(pristine[path])
        return counts


def summary(codec: str, cases: int, counts: Counter) -> str:
    """The closing-note line: "N tried: N clear errors, 0 crashes, 0 hangs, 0 silent wrong outputs"."""
    line = (
        f"{codec}: {cases} tried: {counts['clear error']} clear errors, {counts['crash']} crashes, "
        f"{counts['hang']} hangs, {counts['silent wrong output']} silent wrong outputs"
    )
    if counts["unchanged"]:
        line += f", {counts['unchanged']} unchanged reads"
    kinds = ", ".join(f"{k.split()[1]} {counts[k]}" for k in sorted(counts) if k.startswith("mutation"))
    return f"{line} (mutations: {kinds})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per codec")
    parser.add_argument(
        "--codecs", nargs="+", default=["blosc-lz4", "blosc", "histogram"], help="codecs (blosc-lz4 is the default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-manifest", action="store_true", help="remove the manifest: checksums alone")
    parser.add_argument(
        "--representation",
        choices=("dense", "events"),
        default="dense",
        help="read each case dense, or as electron events (histogram stores: decoded straight to events)",
    )
    args = parser.parse_args(argv)
    bad = 0
    for codec in args.codecs:
        counts = fuzz(
            codec, args.cases, seed=args.seed, manifest=not args.no_manifest, representation=args.representation
        )
        label = f"{codec}{' (no manifest)' if args.no_manifest else ''}"
        label += " as events" if args.representation == "events" else ""
        print(summary(label, args.cases, counts), flush=True)
        bad += counts["crash"] + counts["hang"] + counts["silent wrong output"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
