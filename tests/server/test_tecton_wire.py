"""``tecton.WireSchema``: the pre-encoded per-service part of a get-features response gives the same bytes
as encoding every response in full."""

from __future__ import annotations

from datetime import UTC, datetime

from context_store.server.tecton import MetadataOptions, WireSchema, encode_vector
from context_store.types import MISSING_DATA, PRESENT, FeatureMetadata, FeatureVector
from context_store.vocab.json import dumps_api

TYPES = {
    "v.count": {"type": "int64"},
    "v.sum": {"type": "float64"},
    "v.ok": {"type": "bool"},
    "v.city": {"type": "string"},
    "v.ids": {"type": "array", "elementType": {"type": "int64"}},
    "v.at": {"type": "timestamp"},
    "v.vec": {"type": "array", "elementType": {"type": "float32"}},
}


def _vec(values: list[object]) -> FeatureVector:
    eff = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    meta = [
        FeatureMetadata(n, t, MISSING_DATA if v is None else PRESENT, eff, "v")
        for (n, t), v in zip(TYPES.items(), values)
    ]
    return FeatureVector(dict(zip(TYPES, values)), meta)


def test_wire_schema_encodes_like_encode_vector() -> None:
    rows = [
        [5, 1.5, True, "Paris", [1, 2], datetime(2026, 1, 1, tzinfo=UTC), [0.5, 1.0]],
        [None, None, None, None, None, None, None],
        [2**60, float("nan"), False, "", [], datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC), [0.0]],
    ]
    slo = {"sloEligible": True, "serverTimeSeconds": 0.001}
    for opts in (MetadataOptions(), MetadataOptions(names=False), MetadataOptions(data_types=False)):
        schema = WireSchema(_vec(rows[0]), opts)
        for row in rows:
            for s in (None, slo):
                assert dumps_api(schema.encode(_vec(row), s)) == dumps_api(encode_vector(_vec(row), opts, s))
    assert WireSchema.static(MetadataOptions()) and WireSchema.static(MetadataOptions(slo_info=True))
    assert not WireSchema.static(MetadataOptions(effective_times=True))
    assert not WireSchema.static(MetadataOptions(serving_status=True))
