"""One entry point: ``ContextStore.get_user_context`` serves the SDK, REST ``/v1/context``, the MCP tool and
the CLI, so the same arguments (``query`` included) give the same context through each of them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import anyio
import pytest
from mcp import Client
from starlette.testclient import TestClient

import context_store as cs
from context_store.server import create_app
from context_store.tools.server import create_mcp_server
from tests.support.mcp import McpStoreFactory

QUERY = "how long do refunds take"


class Env(NamedTuple):
    store: cs.ContextStore
    client: TestClient  # the REST app, in process
    cli_args: list[str]  # the same repo and workspace for ``context-store``


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prepare_store: McpStoreFactory) -> Iterator[Env]:
    ws = "e" + uuid.uuid4().hex[:12]
    root = tmp_path_factory.mktemp("entry") / "repo"
    store = prepare_store(root, ws, "sqlite")
    # TestClient sends Host: testserver, which only tests allow.
    app = create_app(root, workspace=ws, online_store="sqlite", auth=False, mcp=False, allowed_hosts=("testserver",))
    with TestClient(app) as client:
        yield Env(store, client, ["-r", str(root), "-w", ws, "--online-store", "sqlite"])
    store.close()


def _mcp(store: cs.ContextStore, args: dict[str, Any]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async with Client(create_mcp_server(store)) as client:
            res = await client.call_tool("get_user_context", args)
            assert not res.is_error, res.content
            assert isinstance(res.structured_content, dict)
            return res.structured_content

    return anyio.run(main)


def _rest(client: TestClient, entity_id: str, params: dict[str, Any]) -> dict[str, Any]:
    r = client.get(f"/v1/context/{entity_id}", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _stable(d: dict[str, Any]) -> dict[str, Any]:
    """The parts that do not depend on when the call ran (ages and the rendered ages in ``text``)."""
    return {
        "features": d["features"],
        "statuses": {k: (p["view"], p["status"]) for k, p in d["provenance"].items()},  # window aggregates: time = now
        "events": [(e["timestamp"], e["values"]) for e in d["recent_events"]],
        "similar": [(i["entity_id"], round(i["score"], 6)) for i in d["similar"]],
        "knowledge": [(c["chunk_id"], c["text"], c["source"], c["start"], c["end"]) for c in d["knowledge"]],
        "rest": {
            k: d[k] for k in ("entity_id", "context_service", "join_keys", "knowledge_name", "notes", "max_tokens")
        },
    }


def test_query_gives_the_same_context_through_sdk_rest_and_mcp(env: Env) -> None:
    store, client, _ = env
    sdk = store.get_user_context("u1", context_service="user_context", max_tokens=400, query=QUERY).to_dict()
    rest = _rest(client, "u1", {"service": "user_context", "max_tokens": 400, "query": QUERY})
    mcp = _mcp(store, {"entity_id": "u1", "context_service": "user_context", "max_tokens": 400, "query": QUERY})
    assert sdk["knowledge_name"] == "help_articles" and sdk["knowledge"]
    assert any("Refunds" in c["text"] for c in sdk["knowledge"])
    assert "knowledge: skipped, no query given" not in sdk["notes"]
    assert _stable(rest) == _stable(sdk)
    assert _stable(mcp) == _stable(sdk)


def test_replay_with_query_is_identical_through_sdk_rest_and_mcp(env: Env) -> None:
    """With ``as_of`` nothing depends on the call time: the whole answer, ``text`` included, is the same."""
    store, client, _ = env
    as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat()
    sdk = store.get_user_context("u2", as_of=as_of, query=QUERY).to_dict()
    rest = _rest(client, "u2", {"as_of": as_of, "query": QUERY})
    mcp = _mcp(store, {"entity_id": "u2", "as_of": as_of, "query": QUERY})
    assert sdk["as_of"] is not None and sdk["knowledge"]
    assert rest == sdk
    # The MCP result adds its schema's extras: untrusted_fields, and data_type in provenance.
    mcp.pop("untrusted_fields")
    for p in mcp["provenance"].values():
        assert p.pop("data_type") is None
    assert mcp == sdk


def test_rest_context_documents_and_validates_query(env: Env) -> None:
    _, client, _ = env
    params = client.get("/openapi.json").json()["paths"]["/v1/context/{entity_id}"]["get"]["parameters"]
    by_name = {p["name"]: p for p in params}
    assert {"query", "max_tokens", "as_of", "service"} <= set(by_name)
    assert by_name["query"]["schema"]["anyOf"][0]["maxLength"] == 2000
    r = client.get("/v1/context/u1", params={"query": " "})
    assert r.status_code == 400 and r.json()["field"] == "query"
    r = client.get("/v1/context/u1", params={"query": "x" * 2001})
    assert r.status_code == 400 and r.json()["field"] == "query"


def test_remote_client_passes_query(env: Env) -> None:
    store, client, _ = env
    from context_store.client import FeatureServerClient

    remote = FeatureServerClient("http://testserver", client=client)  # the in-process app instead of a socket
    got = remote.get_user_context("u1", context_service="user_context", query=QUERY)
    want = store.get_user_context("u1", context_service="user_context", query=QUERY).to_dict()
    assert _stable(got) == _stable(want)


def test_cli_context_is_the_same_context(env: Env) -> None:
    import json

    from click.testing import CliRunner

    from context_store.cli.main import cli

    store, _, cli_args = env
    as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0).isoformat()
    args = ["context", "u3", "--as-of", as_of, "--query", QUERY, "--max-tokens", "300"]
    res = CliRunner().invoke(cli, [*args, "--json", *cli_args])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == store.get_user_context("u3", max_tokens=300, as_of=as_of, query=QUERY).to_dict()
    res = CliRunner().invoke(cli, [*args, *cli_args])
    assert res.exit_code == 0 and res.output.startswith('[user_context for user_id="u3" as of ')
