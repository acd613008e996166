"""Deterministic synthetic data for the example repo: card transactions and item views.

Distributions are chosen to look like real traffic, so that features have something to show:
- user activity is Zipf-like (a few users make most transactions);
- some users are bursty: Poisson-distributed bursts of rapid, larger transactions (fraud-like);
- amounts are lognormal (heavy right tail); merchants are Zipf-popular;
- a small share of values is null (as in any real log).

The same ``seed`` and ``end`` always give byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["generate", "GeneratedData", "item_title"]

_US = 1_000_000
TS = pa.timestamp("us", tz="UTC")

_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "BR", "IN", "JP", "AU"]
_COUNTRY_P = np.array([40, 10, 8, 7, 5, 5, 4, 6, 4, 5, 3, 3], dtype=float)
_CATEGORIES = ["grocery", "restaurants", "travel", "electronics", "fashion", "online", "fuel", "entertainment"]
_MERCHANT_A = [
    "Blue",
    "Golden",
    "Urban",
    "North",
    "Silver",
    "Green",
    "Royal",
    "Metro",
    "Sunny",
    "Red",
    "Prime",
    "Happy",
]
_MERCHANT_B = [
    "Harbor",
    "Oak",
    "Peak",
    "River",
    "Street",
    "Valley",
    "Corner",
    "Bridge",
    "Garden",
    "Market",
    "Lane",
    "Hill",
]
_MERCHANT_C = {
    "grocery": "Grocers",
    "restaurants": "Bistro",
    "travel": "Travel",
    "electronics": "Electronics",
    "fashion": "Boutique",
    "online": "Online",
    "fuel": "Fuel",
    "entertainment": "Cinema",
}
_GENRES = ["drama", "comedy", "thriller", "sci-fi", "documentary", "romance", "animation", "horror"]
_TITLE_WORDS = {
    "drama": (
        ["Silent", "Broken", "Last", "Distant", "Quiet", "Long"],
        ["Summer", "Promise", "River", "Letters", "Road", "Winter"],
    ),
    "comedy": (
        ["Crazy", "Lucky", "Big", "Accidental", "Wild", "Happy"],
        ["Wedding", "Roommates", "Vacation", "Neighbors", "Weekend", "Plan"],
    ),
    "thriller": (
        ["Dark", "Hidden", "Cold", "Deadly", "Final", "Silent"],
        ["Signal", "Witness", "Protocol", "Code", "Target", "Alibi"],
    ),
    "sci-fi": (
        ["Stellar", "Quantum", "Lost", "Red", "Infinite", "Machine"],
        ["Horizon", "Colony", "Orbit", "Frontier", "Signal", "Dawn"],
    ),
    "documentary": (
        ["Inside", "Wild", "Hidden", "Secret", "Ocean", "Ancient"],
        ["Planet", "Kitchens", "Cities", "Forests", "Empires", "Lives"],
    ),
    "romance": (
        ["Paris", "Endless", "Sweet", "Second", "Midnight", "Falling"],
        ["Kiss", "Chance", "Love", "Hearts", "Letters", "Spring"],
    ),
    "animation": (
        ["Little", "Brave", "Magic", "Tiny", "Flying", "Clever"],
        ["Dragon", "Robot", "Fox", "Island", "Kingdom", "Friends"],
    ),
    "horror": (
        ["Haunted", "Black", "Cursed", "Hollow", "Bleeding", "Silent"],
        ["House", "Woods", "Night", "Doll", "Asylum", "Lake"],
    ),
}
_SUFFIX = ["", "", "", " II", " Returns", ": The Beginning", " Reloaded", " Forever"]


@dataclass
class GeneratedData:
    """Paths and row counts of the generated files."""

    files: dict[str, Path]
    rows: dict[str, int]
    start: datetime
    end: datetime
    busiest_user: str
    sample_item: str


def item_title(rng: np.random.Generator, genre: str) -> str:
    a, b = _TITLE_WORDS[genre]
    return f"The {a[rng.integers(len(a))]} {b[rng.integers(len(b))]}{_SUFFIX[rng.integers(len(_SUFFIX))]}".replace(
        "The The", "The"
    )


def _zipf_weights(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    rng.shuffle(w)  # so that id order does not reveal popularity
    return w / w.sum()


def _ts_array(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64), type=pa.int64()).cast(TS)


def _with_nulls(values: list[object], rng: np.random.Generator, rate: float) -> list[object]:
    mask = rng.random(len(values)) < rate
    return [None if m else v for v, m in zip(values, mask)]


def generate(
    out_dir: str | Path,
    users: int = 100,
    events: int = 5000,
    items: int = 200,
    days: int = 14,
    seed: int = 7,
    end: datetime | None = None,
) -> GeneratedData:
    """Write ``transactions``, ``user_profiles``, ``items`` and ``item_views`` parquet files.

    ``events`` transactions and about as many item views over ``days`` days ending at ``end``
    (default: now, to the minute, so that the windows of an online lookup see recent data).
    """
    if users < 1 or events < 1 or items < 1 or days < 1:
        raise ValueError("users, events, items and days must be positive")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    end = (end or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=days)
    end_us, start_us = int(end.timestamp() * _US), int(start.timestamp() * _US)
    span = end_us - start_us

    user_ids = np.array([f"u{i:04d}" for i in range(1, users + 1)])
    activity = _zipf_weights(users, 1.1, rng)
    home = rng.choice(_COUNTRIES, size=users, p=_COUNTRY_P / _COUNTRY_P.sum())

    # Merchants: Zipf-popular, each with a fixed category.
    n_merch = 60
    merch_cat = rng.choice(_CATEGORIES, size=n_merch)
    merchants = np.array(
        [f"{_MERCHANT_A[rng.integers(12)]} {_MERCHANT_B[rng.integers(12)]} {_MERCHANT_C[c]}" for c in merch_cat]
    )
    merch_p = _zipf_weights(n_merch, 1.2, rng)

    # -- transactions: background traffic + bursts of bursty users -------------------------
    n_burst_target = int(events * 0.15)
    bursty = rng.choice(users, size=max(1, users // 10), replace=False)
    b_users: list[int] = []
    b_ts: list[int] = []
    while len(b_users) < n_burst_target:
        u = int(rng.choice(bursty))
        t0 = start_us + int(rng.integers(span))
        size = int(rng.poisson(6)) + 2
        gaps = np.cumsum(rng.exponential(45 * _US, size=size)).astype(np.int64)  # ~45 s apart
        for g in gaps:
            if t0 + g < end_us and len(b_users) < n_burst_target:
                b_users.append(u)
                b_ts.append(int(t0 + g))
    n_bg = events - len(b_users)
    bg_users = rng.choice(users, size=n_bg, p=activity)
    # Daily rhythm: more traffic in the day than at night (hour-of-day weights).
    hour_w = np.array(
        [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.5, 4, 4.5, 4, 3.5, 3.5, 4, 4.5, 5, 5, 4.5, 3.5, 2.5, 1.5]
    )
    day = rng.integers(days, size=n_bg)
    hour = rng.choice(24, size=n_bg, p=hour_w / hour_w.sum())
    bg_ts = start_us + day * 86400 * _US + hour * 3600 * _US + rng.integers(3600 * _US, size=n_bg)
    bg_ts = np.minimum(bg_ts, end_us - 1)

    u_idx = np.concatenate([bg_users, np.array(b_users, dtype=np.int64)])
    ts = np.concatenate([bg_ts, np.array(b_ts, dtype=np.int64)])
    in_burst = np.concatenate([np.zeros(n_bg, bool), np.ones(len(b_users), bool)])
    amount = np.round(rng.lognormal(mean=3.2, sigma=1.1, size=events) * np.where(in_burst, 3.0, 1.0), 2)
    m_idx = rng.choice(n_merch, size=events, p=merch_p)
    abroad = rng.random(events) < np.where(in_burst, 0.5, 0.06)
    country = np.where(abroad, rng.choice(_COUNTRIES, size=events), home[u_idx])
    order = np.lexsort((u_idx, ts))
    u_idx, ts, amount, m_idx, country = u_idx[order], ts[order], amount[order], m_idx[order], country[order]
    transactions = pa.table(
        {
            "user_id": pa.array(user_ids[u_idx].tolist(), pa.string()),
            "amount": pa.array(_with_nulls(amount.tolist(), rng, 0.003), pa.float64()),
            "merchant": pa.array(merchants[m_idx].tolist(), pa.string()),
            "category": pa.array(_with_nulls(merch_cat[m_idx].tolist(), rng, 0.01), pa.string()),
            "country": pa.array(country.tolist(), pa.string()),
            "ts": _ts_array(ts),
        }
    )

    # -- user profiles: a snapshot before the window, and updates for some users ----------
    prof_ts = start_us - rng.integers(1, 10 * 86400, size=users) * _US
    age = np.clip(rng.normal(41, 13, size=users), 18, 90).astype(np.int64)
    acct = np.minimum(rng.exponential(700, size=users), 20 * 365).astype(np.int64) + 1
    score = np.clip(rng.normal(690, 70, size=users), 300, 850).astype(np.int64)
    upd = rng.choice(users, size=max(1, users // 5), replace=False)
    profiles = pa.table(
        {
            "user_id": pa.array(user_ids.tolist() + user_ids[upd].tolist(), pa.string()),
            "age": pa.array(age.tolist() + age[upd].tolist(), pa.int64()),
            "account_age_days": pa.array(acct.tolist() + (acct[upd] + days // 2).tolist(), pa.int64()),
            "country": pa.array(home.tolist() + home[upd].tolist(), pa.string()),
            "credit_score": pa.array(
                _with_nulls(score.tolist(), rng, 0.03)
                + np.clip(score[upd] + rng.integers(-40, 41, size=len(upd)), 300, 850).tolist(),
                pa.int64(),
            ),
            "updated_at": _ts_array(np.concatenate([prof_ts, start_us + rng.integers(span, size=len(upd))])),
        }
    )

    # -- items and item views --------------------------------------------------------------
    item_ids = np.array([f"i{i:04d}" for i in range(1, items + 1)])
    genre = rng.choice(_GENRES, size=items)
    titles = [item_title(rng, g) for g in genre]
    year = rng.integers(1970, 2026, size=items)
    items_t = pa.table(
        {
            "item_id": pa.array(item_ids.tolist(), pa.string()),
            "title": pa.array(titles, pa.string()),
            "genre": pa.array(genre.tolist(), pa.string()),
            "year": pa.array(year.tolist(), pa.int64()),
            "updated_at": _ts_array(np.full(items, start_us - 86400 * _US)),
        }
    )
    item_pop = _zipf_weights(items, 1.0, rng)
    fav = rng.choice(len(_GENRES), size=(users, 2))
    n_views = events
    v_users = rng.choice(users, size=n_views, p=activity)
    likes_fav = rng.random(n_views) < 0.7
    v_items = rng.choice(items, size=n_views, p=item_pop)
    # Re-draw most views from the user's favourite genres (people watch what they like).
    genre_idx = np.array([_GENRES.index(g) for g in genre])
    by_genre = [np.flatnonzero(genre_idx == g) for g in range(len(_GENRES))]
    pick = fav[v_users, rng.integers(2, size=n_views)]
    for g, pool in enumerate(by_genre):
        idx = np.flatnonzero(likes_fav & (pick == g))
        if len(pool) and len(idx):
            v_items[idx] = rng.choice(pool, size=len(idx), p=item_pop[pool] / item_pop[pool].sum())
    is_fav = (fav[v_users] == genre_idx[v_items][:, None]).any(axis=1)
    rating = np.clip(np.round(rng.normal(np.where(is_fav, 4.1, 2.9), 0.9)), 1, 5)
    rated = rng.random(n_views) < 0.4  # most views carry no rating
    v_ts = np.sort(start_us + rng.integers(span, size=n_views))
    views = pa.table(
        {
            "user_id": pa.array(user_ids[v_users].tolist(), pa.string()),
            "item_id": pa.array(item_ids[v_items].tolist(), pa.string()),
            "rating": pa.array([float(r) if k else None for r, k in zip(rating, rated)], pa.float64()),
            "ts": _ts_array(v_ts),
        }
    )

    files = {
        "transactions": out / "transactions.parquet",
        "user_profiles": out / "user_profiles.parquet",
        "items": out / "items.parquet",
        "item_views": out / "item_views.parquet",
    }
    for name, table in (
        ("transactions", transactions),
        ("user_profiles", profiles),
        ("items", items_t),
        ("item_views", views),
    ):
        pq.write_table(table, files[name])
    counts = np.bincount(u_idx, minlength=users)
    return GeneratedData(
        files=files,
        rows={
            "transactions": transactions.num_rows,
            "user_profiles": profiles.num_rows,
            "items": items,
            "item_views": n_views,
        },
        start=start,
        end=end,
        busiest_user=str(user_ids[int(np.argmax(counts))]),
        sample_item=str(item_ids[int(np.argmax(item_pop))]),
    )
