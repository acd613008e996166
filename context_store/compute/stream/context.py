"""``StreamContext``: the typed parts the stream path works on (pushers and workers alike).

The applied definitions, the config, the online and offline stores, and the embedding sink. The
sink is opened on first use (a source with embedding views): opening a vector service is not free
and the server reports vector readiness only once one is open. ``version``/``reload`` let a
long-running worker notice an ``apply`` made elsewhere and pick up the new definitions; ``claim`` lets it
notice that another deployment took the online namespace over (``stores/online/claim.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .online_adapter import ViewStates

if TYPE_CHECKING:
    from ...config import Config
    from ...registry.repo import RepoDefinitions
    from ...stores.offline.base import OfflineStore
    from ...stores.online.base import OnlineStore
    from ...stores.online.claim import NamespaceClaim
    from .sinks import EmbeddingSink

__all__ = ["StreamContext"]


@dataclass
class StreamContext:
    config: Config
    definitions: RepoDefinitions
    online: OnlineStore
    offline: OfflineStore
    embedding_sink: Callable[[], EmbeddingSink]  # called only when a source feeds embedding views
    version: Callable[[], int] | None = None  # the applied registry version (None: never reload)
    reload: Callable[[], StreamContext] | None = None  # the parts on the newly applied definitions
    # This deployment's claim on the online namespace: workers re-verify it at every rebalance, pushers at most
    # once a second, and stop when another deployment took it over (None: no check, hand-built contexts).
    claim: NamespaceClaim | None = None
    # The registry version ``definitions`` were loaded from (-1: unknown, hand-built). A worker stamps its
    # applied-offset announcements with it; a pusher trusts only announcements at least this new.
    definitions_version: int = -1
    # Compiled online state layouts of this context's views (shared by its pusher and workers).
    states: ViewStates = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.states = ViewStates(self.definitions, self.online)
