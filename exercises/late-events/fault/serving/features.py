"""Online features for the ranker: per-user event counts over the last hour.

The store consumes the event stream in arrival order (`ingest`) and answers feature lookups
for ranking requests (`features(user, now_s)`), which become the ranker's 13 dense inputs
(one count per event kind; `ranker_dense`).

Windows are 5 minutes long (WINDOW_S); a request sees the last WINDOWS = 12 complete windows.
ALLOWED_LATENESS_S says how late an event may arrive and still be counted.

The training set was built offline from the same event log; serving must give each request
the features training would have given it (see the brief).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from serving.events import KINDS, Event

WINDOW_S = 300.0
WINDOWS = 12
ALLOWED_LATENESS_S = 600.0


class FeatureStore:
    def __init__(self) -> None:
        # (user, window index) -> counts per kind
        self._counts: dict[tuple[int, int], np.ndarray] = defaultdict(
            lambda: np.zeros(KINDS, np.int64)
        )
        self.now_s = 0.0

    def ingest(self, event: Event) -> None:
        """One event, in arrival order."""
        self.now_s = event.arrival_time_s
        window = int(self.now_s // WINDOW_S)  # the window the event is processed in
        self._counts[(event.user, window)][event.kind] += 1

    def features(self, user: int, now_s: float) -> np.ndarray:
        """Counts per kind over the last WINDOWS complete windows before `now_s`."""
        current = int(now_s // WINDOW_S)
        total = np.zeros(KINDS, np.int64)
        for window in range(current - WINDOWS, current):
            counts = self._counts.get((user, window))
            if counts is not None:
                total += counts
        return total.astype(np.float32)


def ranker_dense(counts: np.ndarray) -> np.ndarray:
    """The ranker's `dense` input for one request: (1, 13) float32 raw counts."""
    return np.asarray(counts, np.float32).reshape(1, KINDS)


def serve_features(events: list[Event], requests: list, store: FeatureStore) -> list[np.ndarray]:
    """Replay: ingest every event that has arrived by each request's time, then look up."""
    out, i = [], 0
    for request in requests:
        while i < len(events) and events[i].arrival_time_s <= request.time_s:
            store.ingest(events[i])
            i += 1
        out.append(store.features(request.user, request.time_s))
    return out
