"""Online features for the ranker: per-user event counts over the last hour, in event time.

The store consumes the event stream in arrival order (`ingest`) and answers feature lookups
for ranking requests (`features(user, now_s)`), which become the ranker's 13 dense inputs
(one count per event kind; `ranker_dense`).

Event time, with a watermark (what training used, point in time correct):

- an event counts in the 5-minute window (WINDOW_S) of its *event time*;
- the watermark is the largest event time seen so far minus ALLOWED_LATENESS_S; a window is
  closed once the watermark has passed its end, and is final from then on;
- an event whose window is already closed when it arrives is too late: it is dropped (and
  counted in `late_dropped`), as the offline pipeline drops it;
- a request sees the last WINDOWS = 12 closed windows, never an open one (whose counts would
  still change as late events arrive).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from serving.events import KINDS, Event

WINDOW_S = 300.0
WINDOWS = 12
ALLOWED_LATENESS_S = 600.0


class FeatureStore:
    def __init__(self) -> None:
        # (user, event-time window index) -> counts per kind
        self._counts: dict[tuple[int, int], np.ndarray] = defaultdict(
            lambda: np.zeros(KINDS, np.int64)
        )
        self.watermark_s = -math.inf
        self.late_dropped = 0

    def _closed_before(self) -> int:
        """Windows with an index below this one are closed."""
        if self.watermark_s == -math.inf:
            return -(10**9)
        return int(math.floor(self.watermark_s / WINDOW_S))

    def ingest(self, event: Event) -> None:
        """One event, in arrival order."""
        window = int(event.event_time_s // WINDOW_S)
        if window < self._closed_before():  # its window is final already: too late
            self.late_dropped += 1
        else:
            self._counts[(event.user, window)][event.kind] += 1
        self.watermark_s = max(self.watermark_s, event.event_time_s - ALLOWED_LATENESS_S)

    def features(self, user: int, now_s: float) -> np.ndarray:
        """Counts per kind over the last WINDOWS closed windows (as of the events ingested)."""
        end = self._closed_before()
        total = np.zeros(KINDS, np.int64)
        for window in range(end - WINDOWS, end):
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
