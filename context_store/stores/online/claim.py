"""One deployment per online namespace: the claim a deployment holds on it, checked by every process.

A namespace is one Redis database + workspace (every ``cs:{ws}:`` key: online state, stream partitions,
leases, offline marks) or one SQLite file. Two repos pointed at the same one (say both use workspace
``default`` on one Redis db) would share stream partitions: a worker of one takes the other's events and
writes them into *its* offline store. So the namespace is claimed by one deployment -- a registry's
random id (``Registry.deployment_id``) -- stored under the meta name ``deployment`` with an atomic
set-if-absent (``OnlineStore.claim_meta``). Every process compares it with its own registry's id:

- at open (``ContextStore``: serving, push, workers, materialize; ``apply`` before writing anything),
- a stream worker on its rebalance cadence (about once a second) -- it stops consuming when it lost it,
- a pusher at most once a second (``check``), a server on its registry refresh and on ``/readyz``.

So nothing is checked per read. ``take_over`` moves the claim deliberately (``apply --take-over``). The keys
themselves do not carry the id; why: docs/online-state.md ("One deployment per namespace").
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from ...errors import DeploymentConflictError, InvalidInputError
from .base import OnlineStore

__all__ = ["CLAIM_META", "TAKE_OVER_WAIT_S", "Claim", "NamespaceClaim"]

CLAIM_META = "deployment"
# How long ``take_over`` waits after moving a claim from another deployment: its stream workers re-check
# the claim at every rebalance (lease 3 s / 3 = every second), so after this no worker of the old
# deployment reads another entry; events pushed once ``take_over`` returned never reach it.
TAKE_OVER_WAIT_S = 3.0


@dataclass(frozen=True)
class Claim:
    """Who holds a namespace: the deployment id, its repo and host, and since when (ISO UTC)."""

    id: str
    repo: str
    host: str = ""
    at: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"id": self.id, "repo": self.repo, "host": self.host, "at": self.at})

    @staticmethod
    def decode(raw: bytes) -> Claim:
        try:
            d = orjson.loads(raw)
            return Claim(str(d["id"]), str(d.get("repo", "")), str(d.get("host", "")), str(d.get("at", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return Claim(raw.decode(errors="replace")[:64], "?")  # unreadable: still someone else's

    def describe(self) -> str:
        where = f"repo {self.repo}" + (f" on {self.host}" if self.host else "")
        return f"{self.id} ({where}{', since ' + self.at if self.at else ''})"


class NamespaceClaim:
    """``deployment``'s claim on ``online``'s namespace of ``workspace``. ``verify()`` reads the claim now
    (writing ours when there is none) and raises ``DeploymentConflictError`` when another deployment holds
    it; ``check()`` does the same at most every ``interval`` seconds; ``ok`` is the last answer."""

    def __init__(self, online: OnlineStore, deployment_id: str, repo: str, workspace: str, interval: float = 1.0):
        if not deployment_id:
            raise InvalidInputError("a deployment id is required to claim an online namespace", field="deployment")
        self.online = online
        self.id = deployment_id
        self.repo = repo
        self.workspace = workspace
        self.interval = interval
        self.ok = False
        self._checked = 0.0

    def _ours(self) -> Claim:
        at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return Claim(self.id, self.repo, socket.gethostname(), at)

    def holder(self) -> Claim | None:
        """The current claim (None: unclaimed). Writes nothing."""
        raw = self.online.get_meta(CLAIM_META)
        return None if raw is None else Claim.decode(raw)

    def conflict(self, other: Claim) -> DeploymentConflictError:
        return DeploymentConflictError(
            f"workspace '{self.workspace}' on {self.online.location} belongs to another deployment, "
            f"{other.describe()}; this repo's deployment is {self.id} ({self.repo}), and two deployments on "
            "one namespace would consume each other's stream events. Use another Redis database or workspace "
            "(online_store / --workspace), or move the workspace to this repo deliberately with "
            "`context-store apply --take-over` (the other deployment's workers then stop)",
            field="workspace",
        )

    def precheck(self) -> None:
        """Raise if another deployment holds the namespace; never writes (``apply`` before it writes anything)."""
        other = self.holder()
        if other is not None and other.id != self.id:
            self.ok = False
            raise self.conflict(other)

    def verify(self) -> None:
        """Claim the namespace if unclaimed (atomic set-if-absent), else check it is ours."""
        self._checked = time.monotonic()
        raw = self.online.get_meta(CLAIM_META)
        if raw is None:  # first process of a deployment here (or the namespace was flushed): claim it
            raw = self.online.claim_meta(CLAIM_META, self._ours().encode())
        holder = Claim.decode(raw)
        self.ok = holder.id == self.id
        if not self.ok:
            raise self.conflict(holder)

    def check(self) -> None:
        """``verify()`` when the last one is older than ``interval`` (or failed); else nothing."""
        if not self.ok or time.monotonic() - self._checked >= self.interval:
            self.verify()

    def take_over(self, wait: float = TAKE_OVER_WAIT_S) -> Claim | None:
        """Make the namespace ours whoever holds it; the previous holder when it was another deployment
        (then waits ``wait`` s for its workers to notice and stop)."""
        previous = self.holder()
        self.online.set_meta(CLAIM_META, self._ours().encode())
        self.verify()
        if previous is None or previous.id == self.id:
            return None
        if wait > 0:
            time.sleep(wait)
        return previous
