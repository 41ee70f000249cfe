"""The online features must equal the point-in-time-correct offline features, late events
included. The reference here is computed from the whole log, independently of the store."""

from __future__ import annotations

import math

import numpy as np
from serving.events import KINDS, Event, Request
from serving.features import FeatureStore, ranker_dense, serve_features

W, N_WINDOWS, LATENESS = 300.0, 12, 600.0


def events_with_late_arrivals(seed: int, late_share: float) -> list[Event]:
    rng = np.random.default_rng(seed)
    n = 6000
    t = np.sort(rng.uniform(0.0, 4 * 3600.0, n))
    user = rng.integers(0, 15, n)
    kind = rng.integers(0, KINDS, n)
    delay = rng.exponential(2.0, n)
    late = rng.random(n) < late_share
    delay[late] = 240.0 * np.exp(rng.standard_normal(int(late.sum())))
    arrival = t + delay + rng.uniform(0, 1e-3, n)
    events = [
        Event(int(u), int(k), float(a), float(b)) for u, k, a, b in zip(user, kind, t, arrival)
    ]
    return sorted(events, key=lambda e: e.arrival_time_s)


def requests(seed: int, n: int = 300) -> list[Request]:
    rng = np.random.default_rng(seed + 1)
    times = np.sort(rng.uniform(3600.0, 4 * 3600.0, n))
    return [Request(int(rng.integers(15)), float(x)) for x in times]


def reference(events: list[Event], reqs: list[Request]) -> list[np.ndarray]:
    arrival = np.array([e.arrival_time_s for e in events])
    etime = np.array([e.event_time_s for e in events])
    window = np.floor(etime / W).astype(int)
    seen_max = np.maximum.accumulate(etime)
    before = np.concatenate([[-math.inf], seen_max[:-1]])  # largest event time before each
    closed_at_arrival = np.floor((before - LATENESS) / W)  # windows below this were closed
    dropped = window < closed_at_arrival
    users = np.array([e.user for e in events])
    kinds = np.array([e.kind for e in events])
    out = []
    for r in reqs:
        n = int(np.searchsorted(arrival, r.time_s, side="right"))
        end = int(math.floor((seen_max[n - 1] - LATENESS) / W))
        keep = (
            (users[:n] == r.user)
            & ~dropped[:n]
            & (window[:n] >= end - N_WINDOWS)
            & (window[:n] < end)
        )
        out.append(np.bincount(kinds[:n][keep], minlength=KINDS).astype(np.float32))
    return out


def mismatches(events: list[Event], reqs: list[Request]) -> list[str]:
    served = serve_features(list(events), list(reqs), FeatureStore())
    expected = reference(events, reqs)
    return [
        f"user {r.user} at {r.time_s:.0f} s: served {s.astype(int).tolist()}, "
        f"expected {e.astype(int).tolist()}"
        for r, s, e in zip(reqs, served, expected)
        if not np.array_equal(np.asarray(s, np.float32), e)
    ]


def test_features_match_offline_with_late_events() -> None:
    bad = mismatches(events_with_late_arrivals(1, 0.15), requests(1))
    assert not bad, f"{len(bad)} of 300 requests got other features than training: {bad[0]}"


def test_features_match_offline_when_every_event_is_on_time() -> None:
    bad = mismatches(events_with_late_arrivals(2, 0.0), requests(2))
    assert not bad, f"{len(bad)} of 300 requests got other features than training: {bad[0]}"


def test_an_event_arriving_after_its_window_closed_is_never_counted() -> None:
    events = [
        Event(0, 0, 100.0, 100.5),
        Event(1, 0, 2000.0, 2000.1),  # watermark 1400: windows before [1200, 1500) closed
        Event(0, 1, 200.0, 2100.0),  # window [0, 300) closed long ago: too late
    ]
    reqs = [Request(0, 2200.0), Request(0, 2500.0), Request(0, 4000.0)]
    served = serve_features(events, reqs, FeatureStore())
    for request, features in zip(reqs, served):
        assert features[1] == 0, f"the too-late event counted at {request.time_s} s"
    assert served[0][0] == 1  # the on-time one does


def test_features_become_the_rankers_dense_input() -> None:
    dense = ranker_dense(np.arange(KINDS, dtype=np.float32))
    assert dense.shape == (1, 13) and dense.dtype == np.float32
