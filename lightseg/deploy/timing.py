"""Timing of callables on a shared machine (``lightseg bench`` and ``--backend auto``): warm-up until two calls
agree, then timed calls; several callables in interleaved rounds so that a drifting load is shared alike."""
from __future__ import annotations

import time


def time_callable(fn, warmup=None, runs=None, sync=None, budget_s=5.0, min_runs=3, max_runs=100):
    """Latencies in ms of ``runs`` timed calls of ``fn()`` after ``warmup`` untimed ones.

    ``None`` counts are chosen from ``budget_s``: warm-up until two consecutive calls agree within 10%,
    then as many runs as fit the budget (``min_runs``..``max_runs``). Returns ``(latencies_ms, warmup_used)``.
    """
    sync = sync or (lambda: None)

    def one():
        t0 = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - t0) * 1000.0

    if warmup is None:
        # Warm up until two consecutive calls agree within 10% (first-call allocations, kernel selection and
        # compilation are over), with at least 2 and at most 10 calls or 30% of the budget.
        warm = [one(), one()]
        while (len(warm) < 10 and abs(warm[-1] - warm[-2]) > 0.1 * min(warm[-2:])
               and sum(warm) < 0.3 * budget_s * 1000):
            warm.append(one())
    else:
        warm = [one() for _ in range(warmup)]
    if runs is None:
        if not warm:
            warm.append(one())
        est = min(warm[-2:])
        runs = int(min(max_runs, max(min_runs, budget_s * 1000 / max(est, 1e-3))))
    warmup_used = len(warm)
    return [one() for _ in range(runs)], warmup_used


def time_interleaved(fns: dict, estimates_ms: dict, runs=None, sync=None, budget_s=5.0, min_runs=3, max_runs=100) -> dict:
    """Latencies (ms) of already warmed-up callables, timed in rounds: one call of each per round, in reverse
    order every other round. ``runs`` None: as many rounds as ``budget_s`` per callable allows, from
    ``estimates_ms`` (one latency each), within ``min_runs``..``max_runs``."""
    sync = sync or (lambda: None)
    names = list(fns)
    if runs is None:
        per_round = sum(max(estimates_ms[n], 1e-3) for n in names)
        runs = int(min(max_runs, max(min_runs, budget_s * 1000 * len(names) / per_round)))
    lat = {n: [] for n in names}
    for i in range(runs):
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[n]()
            sync()
            lat[n].append((time.perf_counter() - t0) * 1000.0)
    return lat
