"""The online state model in one place: per-view state (tiles, blocks, lifetime base, rows),
aggregation partials, raw-event edge tiles, the row codec, entity keys, the write vocabulary
(``Ops``) and the one builder of hash writes (``writes``). Layout: docs/online-state.md.

Imports only ``definitions``, ``errors``, ``types`` and ``vocab`` of the project: stores and
compute both build on it.
"""
