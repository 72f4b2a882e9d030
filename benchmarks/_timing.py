"""Timing of benchmark calls, shared by the benchmarks and the peers' script.

Plain numpy and the standard library only, so the peers' venv (numpy 1.26,
no stemdask) imports it too.
"""

from __future__ import annotations

import time

import numpy as np


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and every live descendant (cluster workers).

    Counts the worker processes of a LocalCluster (stemdask's, or LiberTEM's dask executor)
    as well as the client; ``nan`` without psutil. psutil reads clock ticks (10 ms on Linux):
    right for calls of a few hundred ms, too coarse for a 40 ms in-process call (use
    ``cpu_s`` there).
    """
    try:
        import psutil
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # a child that has just exited
            continue
        total += t.user + t.system
    return total


def timed(fn, reps):
    """Run ``fn`` once cold, then ``reps`` warm times: (timings dict, first result).

    ``cpu_s`` is this process's CPU time (threads included, not child processes);
    ``tree_cpu_s`` adds every child process (cluster workers) and is the CPU cost of a
    cluster run.
    """
    t0 = time.perf_counter()
    first = fn()
    cold = time.perf_counter() - t0
    warm, cpu, tree = [], [], []
    for _ in range(reps):
        k0, c0, t0 = tree_cpu_s(), time.process_time(), time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # this process only (not LocalCluster workers)
        tree.append(tree_cpu_s() - k0)
    return {
        "cold_s": cold,
        "warm_s": warm,
        "median_s": float(np.median(warm)),
        "cpu_s": cpu,
        "median_cpu_s": float(np.median(cpu)),
        "tree_cpu_s": tree,
        "median_tree_cpu_s": float(np.median(tree)),
    }, first


def interleaved_medians(fns, repeat, clock=time.perf_counter):
    """Median seconds (by ``clock``) of each of ``fns``, called in turn in every round after a warm-up call of each.

    The warm-up takes numba compilation and caches out of the figures. On a
    loaded machine the ratio of two medians measured this way is steadier
    than that of two separate runs. ``clock``: ``time.perf_counter`` (wall)
    or ``time.thread_time`` (this thread's CPU).
    """
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, acc in zip(fns, times):
            t0 = clock()
            fn()
            acc.append(clock() - t0)
    return [float(np.median(t)) for t in times]
