"""Timing of a benchmark call, shared by bench_imaging.py and the peers' script.

Plain numpy and the standard library only, so the peers' venv (numpy 1.26,
no stemdask) imports it too.
"""

from __future__ import annotations

import time

import numpy as np


def timed(fn, reps):
    """Run ``fn`` once cold, then ``reps`` warm times: (timings dict, first result)."""
    t0 = time.perf_counter()
    first = fn()
    cold = time.perf_counter() - t0
    warm, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # this process only (not LocalCluster workers)
    return {
        "cold_s": cold,
        "warm_s": warm,
        "median_s": float(np.median(warm)),
        "cpu_s": cpu,
        "median_cpu_s": float(np.median(cpu)),
    }, first
