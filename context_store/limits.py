"""Request limits, one source of truth.

Validation (``serving/``, ``server/``), the OpenAPI schemas (``server/schemas.py``), the MCP tool
schemas (``tools/``) and the server's body-size cap (``server/limits.py``) all read these values, so a
documented range is exactly the accepted range. Bottom-layer vocabulary: imports nothing of the product.
The ranges are listed in docs/security.md ("Limits").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "IntRange",
    "SIMILAR_K",
    "SIMILAR_K_DEFAULT",
    "SEEN_MAX",
    "SIMILAR_FILTER_IDS",
    "SIMILAR_FILTER_CHARS",
    "VECTOR_DIM_MAX",
    "KNOWLEDGE_K",
    "KNOWLEDGE_K_DEFAULT",
    "MAX_TOKENS",
    "LATENCY_BUDGET_MS",
    "QUERY_TEXT_CHARS",
    "CONTEXT_QUERY_CHARS",
    "OUTPUT_TEXT_CHARS",
    "ENTITY_ID_CHARS",
    "NAME_CHARS",
    "JOIN_KEYS",
    "FILTER_KEYS",
    "REQUEST_CONTEXT_KEYS",
    "TIME_TEXT_CHARS",
    "IDEMPOTENCY_KEY_CHARS",
    "RECORD_FIELDS",
    "BATCH_ROWS",
    "INGEST_RECORDS",
    "INGEST_SOURCES",
    "PUSH_RECORDS",
    "BODY_BYTES",
    "TIME_MIN",
    "TIME_MAX",
    "MEMORY_TEXT_CHARS",
    "MEMORY_KIND_CHARS",
    "MEMORY_METADATA_BYTES",
    "MEMORY_ID_CHARS",
    "MEMORY_ID_PATTERN",
    "NO_CONTROL_PATTERN",
    "INVISIBLE_CHARS",
    "MEMORY_K",
    "MEMORY_K_DEFAULT",
    "CATALOG_K",
    "CATALOG_K_DEFAULT",
]


@dataclass(frozen=True, slots=True)
class IntRange:
    """An inclusive integer range ``lo..hi``."""

    lo: int
    hi: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi

    def schema(self) -> dict[str, int]:
        """The JSON-Schema bounds (OpenAPI) of this range."""
        return {"minimum": self.lo, "maximum": self.hi}

    def __str__(self) -> str:
        return f"{self.lo}..{self.hi}"


# -- counts and budgets -------------------------------------------------------------------------
SIMILAR_K = IntRange(1, 100)  # items of one similarity search (REST, MCP, SDK)
SIMILAR_K_DEFAULT = 10
SEEN_MAX = 10_000  # seen items of one entity left out of its similar items (newest first)
SIMILAR_FILTER_IDS = 10_000  # ids in one $in/$nin list of a similarity filter (MCP)
VECTOR_DIM_MAX = 4_096  # numbers of a query vector (MCP find_similar)
SIMILAR_FILTER_CHARS = 8_000  # the JSON filter of GET /v1/context/{id} (a query parameter: keep URLs sane)
KNOWLEDGE_K = IntRange(1, 100)  # chunks of one knowledge search
KNOWLEDGE_K_DEFAULT = 5
MAX_TOKENS = IntRange(16, 100_000)  # token budget of a context's text: below 16 not even the header fits
LATENCY_BUDGET_MS = IntRange(100, 600_000)  # Tecton's floor: below 100 ms a budget measures scheduling noise

# -- text lengths (characters) ------------------------------------------------------------------
QUERY_TEXT_CHARS = 10_000  # a text to embed for a similarity or knowledge query (SDK/REST)
CONTEXT_QUERY_CHARS = 2_000  # the question of a context request, and query texts of MCP tools
OUTPUT_TEXT_CHARS = 2_000  # one untrusted string (attribute, event field, chunk) in structured output
ENTITY_ID_CHARS = 256
NAME_CHARS = 128  # feature service / view / knowledge names in MCP tool arguments
TIME_TEXT_CHARS = 64  # an ISO-8601 time argument
IDEMPOTENCY_KEY_CHARS = 256  # an Idempotency-Key, and an event id (visible ASCII)

# -- sizes of one request -----------------------------------------------------------------------
JOIN_KEYS = 16  # join keys of one MCP get_features call
FILTER_KEYS = 16  # attribute filters of one MCP similarity call
REQUEST_CONTEXT_KEYS = 256  # request-time values of one MCP get_features call
BATCH_ROWS = 1_000  # rows of one get-features-batch request
INGEST_RECORDS = 10_000  # records of one source in one REST ingest request
INGEST_SOURCES = 16  # sources of one REST ingest request (per-source and source limits are exact in JSON Schema)
RECORD_FIELDS = 256  # fields of the one event of a record_event call (MCP, POST /v1/events)
PUSH_RECORDS = 1_000_000  # records of one SDK push; larger loads belong in the batch source
BODY_BYTES = 4 * 1024 * 1024  # a request body (REST and MCP), checked before parsing

# -- agent memories (remember / search_memories / forget_memory: SDK, REST, MCP) ---------------------
MEMORY_TEXT_CHARS = 4_000  # the text of one memory
MEMORY_KIND_CHARS = 64  # its kind ("preference", "fact", ...)
MEMORY_METADATA_BYTES = 4_096  # its metadata, as compact JSON
MEMORY_ID_CHARS = 64  # a memory id argument (ids are 32 hex characters)
MEMORY_ID_PATTERN = r"^[A-Za-z0-9_\-]+$"
# Ids and keys in URL paths: no C0 control characters (what serving refuses), said in the OpenAPI schema too.
NO_CONTROL_PATTERN = r"^[^\u0000-\u001f]+$"
# C0/C1 controls, DEL, zero-width and bidi overrides: invisible text an attacker could hide in (a regex class).
INVISIBLE_CHARS = "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
MEMORY_K = IntRange(1, 50)  # memories of one search
MEMORY_K_DEFAULT = 5

# -- the catalog (search_catalog / GET /v1/catalog/search / MCP search_features) -------------------
CATALOG_K = IntRange(1, 100)  # items of one catalog search; the query is at most CONTEXT_QUERY_CHARS
CATALOG_K_DEFAULT = 10

# -- data quality (GET /v1/status/quality, ContextStore.quality_runs) ----------------------------------
QUALITY_RUNS = IntRange(1, 1000)  # runs of one listing
QUALITY_RUNS_DEFAULT = 50

# -- times --------------------------------------------------------------------------------------
# Every time a caller gives (request_time, as_of, --start/--end, event timestamps) must fall in
# [TIME_MIN, TIME_MAX) once converted to UTC. Wide enough for historical data (1900) and far-future
# sentinels people actually use (2199), narrow enough that any offset or unit conversion stays inside
# what datetime and int64 microseconds can hold (year 1..9999): no OverflowError reaches a client.
TIME_MIN = datetime(1900, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)
