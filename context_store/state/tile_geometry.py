"""Tile sizing and aligned-block decomposition: pure integer math, separate from the per-view Redis state."""

from __future__ import annotations

from datetime import timedelta

from ..definitions import FeatureView

__all__ = ["TILES_PER_WINDOW", "choose_tile_us", "decompose"]

US = 1_000_000  # µs per second
TILES_PER_WINDOW = 96  # finer tiles = smaller exact edges to cut per read; 4^L blocks keep reads short
_NICE = [1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 7 * 86400]


def choose_tile_us(view: FeatureView) -> int:
    if view.aggregation_interval is not None:
        return view.aggregation_interval // timedelta(microseconds=1)
    w = view.max_window
    if w is None:
        finite = [a.window_td for a in view.aggregations if a.window_td is not None]
        w = max(finite) if finite else timedelta(days=1)
    target = w.total_seconds() / TILES_PER_WINDOW
    for s in _NICE:
        if s >= target:
            return s * US
    return _NICE[-1] * US


def decompose(a: int, b: int, max_level: int) -> list[tuple[int, int]]:
    """Aligned blocks ``(level, index)`` covering tiles ``[a, b)``: block j of level L covers
    tiles ``[j*4^L, (j+1)*4^L)``; at most ~3 blocks per level on each side."""
    out: list[tuple[int, int]] = []
    while a < b:
        lv = 0
        while lv < max_level and a % (4 ** (lv + 1)) == 0 and a + 4 ** (lv + 1) <= b:
            lv += 1
        out.append((lv, a >> (2 * lv)))
        a += 4**lv
    return out
