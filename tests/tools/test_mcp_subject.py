"""MCP over real HTTP with subject-bound tokens, and tools listed by the caller's scopes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from context_store.tools.scopes import REQUIRED_SCOPE
from tests.support.mcp import READ_TOOLS, TOOL_NAMES, session_calls
from tests.support.subject import make_jwt, subject_server

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    with subject_server(tmp_path_factory.mktemp("mcpsubject") / "repo", redis_url, mcp=True) as s:
        s["keys"]["jwt_u1"] = make_jwt({"sub": "u1", "ws": s["ws"], "scope": "read"})
        yield s


def _calls(srv: dict[str, Any], key: str, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    tools, results = session_calls(srv["url"] + "/mcp", key, calls)
    return [set(tools), *results]


def _forbidden(res: Any, *words: str) -> None:
    text = res.content[0].text
    assert res.is_error and "ForbiddenError: " in text and all(w in text for w in words), text


@pytest.mark.parametrize("who", ["u1", "jwt_u1"])
def test_every_entity_tool_is_bound_to_the_subject(srv: dict[str, Any], who: str) -> None:
    _, own, default, other, f_own, f_other, s_own, s_other, s_items, s_text = _calls(
        srv,
        srv["keys"][who],
        [
            ("get_user_context", {"entity_id": "u1", "max_tokens": 200}),
            ("get_user_context", {}),  # omitted: the subject's
            ("get_user_context", {"entity_id": "u2"}),
            ("get_features", {"feature_service": "user_features", "join_keys": {"user_id": "u1"}}),
            ("get_features", {"feature_service": "user_features", "join_keys": {"user_id": "u2"}}),
            ("find_similar", {"view": "user_embeddings", "entity_id": "u1", "k": 2}),
            ("find_similar", {"view": "user_embeddings", "entity_id": "u2"}),
            ("find_similar", {"view": "item_embeddings", "entity_id": "i1"}),
            ("find_similar", {"view": "item_embeddings", "text": "red running shoes", "k": 2}),
        ],
    )
    assert not own.is_error and own.structured_content["entity_id"] == "u1"
    assert not default.is_error and default.structured_content["entity_id"] == "u1"
    _forbidden(other, "user_id=u1", "entity_id")
    assert not f_own.is_error and f_own.structured_content["features"]["user_profile.segment"] == "runner"
    _forbidden(f_other, "user_id=u1", "join_keys.user_id")
    assert not s_own.is_error and len(s_own.structured_content["items"]) == 2
    _forbidden(s_other, "user_id=u1")
    _forbidden(s_items, "item_id")
    assert not s_text.is_error and s_text.structured_content["items"][0]["entity_id"] == "i1"


def test_an_unbound_key_reads_any_entity_and_must_name_one(srv: dict[str, Any]) -> None:
    _, other, missing, f_other = _calls(
        srv,
        srv["keys"]["free"],
        [
            ("get_user_context", {"entity_id": "u2", "max_tokens": 200}),
            ("get_user_context", {}),
            ("get_features", {"feature_service": "user_features", "join_keys": {"user_id": "u2"}}),
        ],
    )
    assert not other.is_error and other.structured_content["entity_id"] == "u2"
    assert missing.is_error and "entity_id" in missing.content[0].text
    assert not f_other.is_error


def test_tools_are_listed_by_scope(srv: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    listed = _calls(srv, srv["keys"]["free"], [])[0]
    assert listed == READ_TOOLS  # a read token does not see record_event
    # A tool needing "ingest" (as record_event / remember will): hidden from read tokens, refused when called.
    monkeypatch.setitem(REQUIRED_SCOPE, "describe_feature_service", "ingest")
    listed, called = _calls(srv, srv["keys"]["free"], [("describe_feature_service", {"name": "user_features"})])
    assert listed == READ_TOOLS - {"describe_feature_service"}
    _forbidden(called, "describe_feature_service", "'ingest'")
    for who in ("ingest", "u1_ingest"):
        listed, called = _calls(srv, srv["keys"][who], [("describe_feature_service", {"name": "user_features"})])
        assert listed == TOOL_NAMES and not called.is_error
    jwt_ingest = make_jwt({"sub": "u1", "ws": srv["ws"], "scope": "read ingest"})
    assert _calls(srv, jwt_ingest, [])[0] == TOOL_NAMES
