"""FaissIndex: recall against brute force, incremental add/update/delete, filters, compaction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_store.errors import InvalidInputError
from context_store.stores.vector import FaissIndex, compile_filter
from tests.support.vectors import brute_topk, clustered

N, DIM = 20_000, 384


def _attrs(n: int) -> list[dict]:
    return [{"cat": f"c{i % 100}", "price": float(i % 50), "flag": i % 3 == 0} for i in range(n)]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    # spread 1.8 makes neighbourhoods overlap: a real ANN problem (HNSW ef=64 gets ~0.98, not 1.0)
    return clustered(N, DIM, seed=1, clusters=200, spread=1.8)


@pytest.fixture(scope="module")
def hnsw(data: np.ndarray) -> FaissIndex:
    idx = FaissIndex(DIM, "hnsw")
    idx.upsert([f"e{i}" for i in range(N)], data, _attrs(N))
    return idx


def _queries(data: np.ndarray, m: int = 200, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = data[rng.choice(len(data), m, replace=False)] + rng.normal(size=(m, DIM)).astype(np.float32) * 0.05
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _recall(idx: FaissIndex, data: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    truth = brute_topk(data, queries, k)
    hit = 0
    for q, t in zip(queries, truth):
        got = {int(i[1:]) for i, _ in idx.search(q, k)}
        hit += len(got & set(t.tolist()))
    return hit / (k * len(queries))


def test_hnsw_recall_at_10_vs_brute_force(hnsw: FaissIndex, data: np.ndarray) -> None:
    assert hnsw.stats()["mode"] == "hnsw" and len(hnsw) == N
    assert _recall(hnsw, data, _queries(data)) >= 0.95


def test_ivf_recall_at_10_vs_brute_force(data: np.ndarray) -> None:
    idx = FaissIndex(DIM, "ivf", flat_threshold=1000)
    idx.upsert([f"e{i}" for i in range(N)], data)
    assert idx.stats()["mode"] == "ivf"
    assert _recall(idx, data, _queries(data, 100)) >= 0.95


def test_scores_are_cosines_best_first(hnsw: FaissIndex, data: np.ndarray) -> None:
    q = _queries(data, 1)[0]
    hits = hnsw.search(q, 10)
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    for i, s in hits:
        assert s == pytest.approx(float(data[int(i[1:])] @ q), abs=1e-4)


def test_incremental_add_update_delete_visible_immediately() -> None:
    data = clustered(12_000, 64, seed=3, spread=1.5)
    idx = FaissIndex(64, "hnsw")
    idx.upsert([f"e{i}" for i in range(len(data))], data)
    rng = np.random.default_rng(4)
    new = rng.normal(size=(1, 64)).astype(np.float32)
    idx.upsert(["fresh"], new, [{"cat": "new"}])
    assert idx.search(new[0], 1)[0][0] == "fresh"
    assert idx.get_attributes("fresh") == {"cat": "new"}
    # update: the id now answers to its new vector, and only once
    idx.upsert(["e5"], new * -1)
    hits = idx.search(-new[0], 3)
    assert hits[0][0] == "e5" and [i for i, _ in hits].count("e5") == 1
    assert idx.search(data[5], 10)[0][0] != "e5"
    # delete: gone from results and from membership, even with k = everything nearby
    assert idx.delete(["fresh", "missing"]) == 1
    assert "fresh" not in idx and all(i != "fresh" for i, _ in idx.search(new[0], 50))
    assert len(idx) == 12_000  # 12_000 + fresh - fresh; e5 replaced in place


def test_compaction_keeps_results_exact() -> None:
    data = clustered(4_000, 32, seed=5)
    idx = FaissIndex(32, "flat")
    ids = [f"e{i}" for i in range(len(data))]
    idx.upsert(ids, data, _attrs(len(data)))
    idx.delete(ids[:2_000])  # past the compaction threshold
    st_ = idx.stats()
    assert st_["dead"] == 0 and st_["positions"] == 2_000 == st_["live"]
    rest = data[2_000:]
    for query in rest[:5]:
        got = [i for i, _ in idx.search(query, 10)]
        want = [f"e{2_000 + j}" for j in brute_topk(rest, query, 10)]
        assert got == want
    assert idx.get_attributes("e2001")["cat"] == "c1"  # attributes follow their rows through compaction


def test_auto_switches_from_flat_to_hnsw() -> None:
    data = clustered(3_000, 32, seed=7)
    idx = FaissIndex(32, "auto", flat_threshold=1_000)
    idx.upsert([f"e{i}" for i in range(900)], data[:900])
    assert idx.stats()["mode"] == "flat"
    idx.upsert([f"e{i}" for i in range(900, 3_000)], data[900:])
    assert idx.stats()["mode"] == "hnsw" and len(idx) == 3_000
    assert idx.search(data[42], 1)[0][0] == "e42"


def test_filtered_search_returns_k_matches(hnsw: FaissIndex, data: np.ndarray) -> None:
    attrs = _attrs(N)
    q = _queries(data, 3, seed=8)
    for flt, pred in [
        ({"cat": "c7"}, lambda a: a["cat"] == "c7"),  # 1%: exact scan of the allowed rows
        ({"price": {"$lt": 20}}, lambda a: a["price"] < 20),  # 40%: ANN with a selector
        ({"flag": True, "cat": {"$in": ["c3", "c6", "c9"]}}, lambda a: a["flag"] and a["cat"] in ("c3", "c6", "c9")),
    ]:
        allowed = np.array([pred(a) for a in attrs])
        for query in q:
            hits = hnsw.search(query, 10, filter=flt)
            assert len(hits) == 10
            assert all(pred(hnsw.get_attributes(i)) for i, _ in hits)
            truth = np.flatnonzero(allowed)[brute_topk(data[allowed], query, 10)]
            assert len({int(i[1:]) for i, _ in hits} & set(truth.tolist())) >= 9


def test_filter_with_fewer_matches_than_k_returns_them_all(hnsw: FaissIndex, data: np.ndarray) -> None:
    hits = hnsw.search(data[0], 100, filter={"cat": "c1", "price": 1.0})
    # cat c1 <=> i % 100 == 1; price 1 <=> i % 50 == 1 ; both: i % 100 == 1 -> 200 rows, k=100
    assert len(hits) == 100
    assert hnsw.search(data[0], 5, filter={"cat": "nope"}) == []


def test_exclude_drops_the_query_entity(hnsw: FaissIndex, data: np.ndarray) -> None:
    hits = hnsw.search(data[11], 10, exclude=["e11"])
    assert len(hits) == 10 and "e11" not in [i for i, _ in hits]


def test_bad_vectors_are_rejected() -> None:
    idx = FaissIndex(8, "flat")
    with pytest.raises(ValueError, match="shape"):
        idx.upsert(["a"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        idx.upsert(["a"], np.full((1, 8), np.nan))
    idx.upsert(["a"], np.ones((1, 8)))
    with pytest.raises(ValueError, match="dim"):
        idx.search(np.ones(3), 1)
    with pytest.raises(ValueError, match="non-zero"):
        idx.search(np.zeros(8), 1)


def test_compile_filter_errors_name_the_field() -> None:
    with pytest.raises(InvalidInputError) as e:
        compile_filter({"colour": "red"}, ["cat"])
    assert e.value.field == "filter.colour"
    with pytest.raises(InvalidInputError, match="unknown operator") as e:
        compile_filter({"cat": {"$regex": "x"}}, ["cat"])
    assert e.value.field == "filter.cat"
    with pytest.raises(InvalidInputError, match="needs a list"):
        compile_filter({"cat": {"$in": "x"}}, ["cat"])
    with pytest.raises(InvalidInputError, match="number or string"):
        compile_filter({"cat": {"$gt": None}}, ["cat"])
    with pytest.raises(InvalidInputError):
        compile_filter({"cat": {"nested": {"x": 1}}}, ["cat"])
    with pytest.raises(InvalidInputError):
        compile_filter(["cat"], ["cat"])  # type: ignore[arg-type]


_VALUES = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b", "c"]), st.booleans())
_OPS = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"])


def _matches(v, op, x):  # type: ignore[no-untyped-def]
    """Reference semantics, written independently of the vectorised implementation."""
    same = lambda a, b: isinstance(a, bool) == isinstance(b, bool) and a == b  # noqa: E731
    if op == "$eq":
        return same(v, x)
    if op == "$ne":
        return not same(v, x)
    if op == "$in":
        return any(same(v, y) for y in x)
    if op == "$nin":
        return not any(same(v, y) for y in x)
    if v is None or isinstance(v, bool) or isinstance(v, str) != isinstance(x, str):
        return False
    return {"$gt": v > x, "$gte": v >= x, "$lt": v < x, "$lte": v <= x}[op]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.fixed_dictionaries({"num": st.one_of(st.none(), st.integers(-3, 3)), "any": _VALUES}),
        min_size=1,
        max_size=40,
    ),
    column=st.sampled_from(["num", "any"]),
    op=_OPS,
    value=st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b"]), st.none(), st.booleans()),
    k=st.integers(1, 10),
)
def test_filter_semantics_match_reference(rows, column, op, value, k) -> None:  # type: ignore[no-untyped-def]
    if op in ("$in", "$nin"):
        value = [value, 2]
    elif op in ("$gt", "$gte", "$lt", "$lte") and (value is None or isinstance(value, bool)):
        value = 0
    rng = np.random.default_rng(len(rows))
    vecs = rng.normal(size=(len(rows), 8)).astype(np.float32)
    idx = FaissIndex(8, "flat")
    idx.upsert([f"r{i}" for i in range(len(rows))], vecs, rows)
    q = rng.normal(size=8).astype(np.float32)
    got = [i for i, _ in idx.search(q, k, filter={column: {op: value}})]
    allowed = [i for i, r in enumerate(rows) if _matches(r[column], op, value)]
    scores = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    want = sorted(allowed, key=lambda i: -scores[i])[:k]
    assert len(got) == len(want)
    assert {int(i[1:]) for i in got} == set(want) or np.allclose(
        sorted(scores[[int(i[1:]) for i in got]]), sorted(scores[want]), atol=1e-6
    )


def test_ivf_deletes_and_updates_are_exact_about_membership() -> None:
    data = clustered(5_000, 32, seed=9)
    idx = FaissIndex(32, "ivf", flat_threshold=1_000)
    idx.upsert([f"e{i}" for i in range(len(data))], data, _attrs(len(data)))
    assert idx.stats()["mode"] == "ivf"
    idx.delete(["e1", "e2"])
    idx.upsert(["e3"], -data[3:4])
    for q in (data[1], data[2], data[3]):
        hits = [i for i, _ in idx.search(q, 50)]
        assert "e1" not in hits and "e2" not in hits and hits.count("e3") <= 1
    assert idx.search(-data[3], 1)[0][0] == "e3"
    # k larger than what ANN returns falls back to an exact scan that must skip deleted rows too
    everything = [i for i, _ in idx.search(data[0], 100, filter={"flag": {"$in": [True, False]}})]
    assert len(everything) == 100 and "e1" not in everything


def test_batch_attribute_and_vector_reads_match_one_by_one() -> None:
    """``search_attributes`` (one take per column) and ``get_vectors`` return what ``get_attributes``
    and ``get_vector`` return per id: numbers back as int where integral (also beyond 2**53 as float),
    nulls, strings, a column missing for some rows, unknown ids."""
    rng = np.random.default_rng(3)
    ids = [f"i{j}" for j in range(40)]
    attrs: list[dict] = [
        {
            "n": [1, 2.5, None, 2**60, -0.0, float("inf")][j % 6],
            "s": None if j % 5 == 0 else f"v{j % 4}",
            **({"late": j} if j >= 30 else {}),
        }
        for j in range(40)
    ]
    idx = FaissIndex(8, "flat")
    idx.upsert(ids, rng.normal(size=(40, 8)).astype(np.float32), attrs)
    idx.delete(["i7"])
    hits = [(i, 0.5) for i in ["i3", "i0", "nope", "i35", "i7", "i3", "i39", "i12"]]
    got = idx.search_attributes(hits)
    assert repr(got) == repr([idx.get_attributes(i) for i, _ in hits])
    assert got[0] == {"n": 2**60, "s": "v3", "late": None} and got[2] == {}
    want = ["i5", "zz", "i5", "i7", "i31"]
    pairs = idx.get_vectors(want)
    assert [i for i, _ in pairs] == [i for i in want if idx.get_vector(i) is not None]
    for i, v in pairs:
        ref = idx.get_vector(i)
        assert ref is not None and v.dtype == ref.dtype and v.tobytes() == ref.tobytes()
