"""This deployment's claim on the online namespace, for ``ContextStore`` (``stores/online/claim.py``).

Two repos applied to the same workspace and online store would overwrite each other's state: the
first apply claims the namespace for the registry's deployment id, and every process of that
deployment checks the claim when it opens the online store. ``ContextStore`` owns one
``Deployment`` and delegates its deployment verbs (``check_deployment``, ``take_over``,
``recheck_deployment``) to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import DeploymentConflictError

if TYPE_CHECKING:
    from ..registry.registry import Registry
    from ..stores.online.base import OnlineStore
    from ..stores.online.claim import Claim, NamespaceClaim

__all__ = ["Deployment"]


class Deployment:
    """The claim of one registry's deployment on its online namespace (created on first use)."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        online: Callable[[], OnlineStore],
        repo: str,
        workspace: str,
        on_conflict: Callable[[], None],
    ) -> None:
        self._registry, self._online = registry, online  # the store's, opened on first use
        self._repo, self._workspace = repo, workspace
        self._on_conflict = on_conflict  # the store forgets what it opened on the claim's word
        self._lock = threading.Lock()
        self._claim: NamespaceClaim | None = None

    @property
    def claim(self) -> NamespaceClaim | None:
        """The claim object once made (workers and pushers re-check it on their own cadence)."""
        return self._claim

    @property
    def ok(self) -> bool:
        """The last check found the namespace ours."""
        claim = self._claim
        return claim is not None and claim.ok

    def _namespace_claim(self, create: bool) -> NamespaceClaim | None:
        """The claim object of this registry's deployment id (None while nothing is applied and not ``create``)."""
        if self._claim is None:
            from ..stores.online.claim import NamespaceClaim

            reg = self._registry()
            dep = reg.deployment_id(create=create or reg.applied_version() > 0)
            if dep is None:
                return None
            with self._lock:
                if self._claim is None:
                    self._claim = NamespaceClaim(self._online(), dep, self._repo, self._workspace)
        return self._claim

    def ensure(self, recheck: bool = False) -> None:
        """Claim the namespace (first process of this deployment) or check the claim is ours: raises
        ``DeploymentConflictError``. Nothing applied yet: nothing to check (the first apply claims it)."""
        claim = self._namespace_claim(create=False)
        if claim is not None and (recheck or not claim.ok):
            try:
                claim.verify()
            except DeploymentConflictError:
                self._on_conflict()
                raise

    def check(self) -> None:
        """Raise ``DeploymentConflictError`` if another deployment holds the namespace (writes nothing)."""
        claim = self._namespace_claim(create=True)
        if claim is not None:
            claim.precheck()

    def take_over(self) -> Claim | None:
        """Move the namespace's claim to this deployment; the previous holder when it was another one."""
        claim = self._namespace_claim(create=True)
        return None if claim is None else claim.take_over()

    def recheck(self) -> None:
        """Re-read a claim already made (never makes one)."""
        if self._claim is not None:
            self.ensure(recheck=True)

    def reset(self) -> None:
        """Forget the claim object (the store closed its online store)."""
        self._claim = None
