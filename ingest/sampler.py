"""Keeps frames at a fixed rate on a grid of stream time, independent of segment boundaries.

The grid cuts stream time into slots ``[k/fps, (k+1)/fps)``; the first frame that falls in a
slot is kept and the rest of that slot is dropped. A source slower than ``fps`` keeps every
frame; a faster one keeps about ``fps`` frames per second, evenly spread.

The rate can change between frames (``set_fps``: the ``thin`` overload policy, ``ingest.lag``):
the grid becomes the new rate's, and the next frame kept is in a later slot of it than the
last frame kept, so stream time never goes backwards and the new rate holds from the next
slot boundary on.
"""

from __future__ import annotations

import math

# Frame times are sums of floats (segment starts + pts deltas): absorb their rounding noise.
_EPSILON = 1e-6


class FrameSampler:
    def __init__(self, fps: float = 2.0) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.fps = fps
        self.last_slot: int | None = None
        self._last_time: float | None = None  # stream time of the last frame kept

    def set_fps(self, fps: float) -> None:
        """Sample at ``fps`` from the next frame on (call it between frames, not during a decode)."""
        if fps <= 0:
            raise ValueError("fps must be positive")
        if fps == self.fps:
            return
        self.fps = fps
        if self._last_time is not None:
            self.last_slot = self.slot_of(self._last_time)

    def slot_of(self, stream_time: float) -> int:
        return math.floor(stream_time * self.fps + _EPSILON)

    def accept(self, stream_time: float) -> bool:
        """Whether to keep the frame at ``stream_time``; call it in stream-time order."""
        slot = self.slot_of(stream_time)
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        self.last_slot = slot
        self._last_time = stream_time
        return True

    def select(self, stream_times: list[float]) -> list[int]:
        """Indices of the frames to keep among ``stream_times`` (in order)."""
        return [i for i, t in enumerate(stream_times) if self.accept(t)]
