"""A seeded stream of user events with realistic late arrivals.

Each event is (user, kind, event_time_s, arrival_time_s): `kind` in 0..12 is the ranker's
dense feature it counts towards (impressions, clicks, add-to-cart, ...). Most events arrive
within seconds; mobile clients buffer theirs while offline, so a share arrives minutes later
(log-normal delay, median `late_median_s`). Arrival times are distinct, so "arrival order" is
well defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = 13


@dataclass(frozen=True)
class Event:
    user: int
    kind: int
    event_time_s: float
    arrival_time_s: float


@dataclass(frozen=True)
class Request:
    user: int
    time_s: float  # when the ranking request is served (processing time = event time)


def generate_events(
    rng: np.random.Generator,
    users: int = 20,
    duration_s: float = 4 * 3600.0,
    rate_per_s: float = 0.5,
    late_share: float = 0.15,
    late_median_s: float = 240.0,
) -> list[Event]:
    """Events in arrival order."""
    n = int(rng.poisson(rate_per_s * duration_s))
    event_times = np.sort(rng.uniform(0.0, duration_s, n))
    user = rng.zipf(1.5, n) % users
    kind = np.minimum(rng.geometric(0.3, n) - 1, KINDS - 1)
    delay = rng.exponential(2.0, n)  # on time: a couple of seconds
    late = rng.random(n) < late_share
    delay[late] = late_median_s * np.exp(rng.standard_normal(int(late.sum())))
    arrival = event_times + delay + rng.uniform(0.0, 1e-3, n)  # distinct arrival times
    events = [
        Event(int(u), int(k), float(t), float(a))
        for u, k, t, a in zip(user, kind, event_times, arrival)
    ]
    return sorted(events, key=lambda e: e.arrival_time_s)


def generate_requests(
    rng: np.random.Generator, users: int = 20, duration_s: float = 4 * 3600.0, n: int = 400
) -> list[Request]:
    times = np.sort(rng.uniform(3600.0, duration_s, n))  # after a warm-up hour
    return [Request(int(rng.integers(users)), float(t)) for t in times]
