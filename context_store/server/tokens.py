"""JWT bearer tokens, verified locally (no network): ``JwtVerifier(config).verify(token) -> JwtIdentity``.

The key material comes from ``auth.jwt`` (``context_store/jwt_config.py``): an HS* secret from the
environment, or a PEM public key / JWKS file for RS*/ES*/PS*/EdDSA. Only the configured algorithms are
accepted (never ``none``, never HS* beside a public key: the config refuses both). ``exp`` is required;
``exp``/``nbf``/``iat`` are checked with the configured leeway, ``aud`` always, ``iss`` when configured.
Messages never quote the token.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jwt

from ..access import Subject
from ..config import check_workspace
from ..errors import ContextStoreError, ForbiddenError, InvalidInputError, UnauthorizedError
from ..jwt_config import JwtConfig

__all__ = ["JwtIdentity", "JwtVerifier", "looks_like_jwt"]

_FIELD = "Authorization"
_MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash
_BROADEST = ("admin", "ingest", "read", "metrics")  # server.keys.GRANTS: the first one a token names counts
_CACHE_MAX = 10_000
_CACHE_S = 60.0  # a verified token is re-verified after this long (and never used past its exp)


class JwtIdentity(NamedTuple):
    workspace: str
    scope: str
    key_id: str  # ``jwt:<kid or iss>:<sub>``: rate limits and metrics, never the token
    subject: Subject | None


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments (API keys are ``cs_<id>_<secret>``)."""
    return token.count(".") == 2 and not token.startswith("cs_")


def _bad(message: str) -> UnauthorizedError:
    return UnauthorizedError(f"invalid bearer token: {message}", field=_FIELD)


class JwtVerifier:
    def __init__(self, config: JwtConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._jwks_mtime = 0.0
        self._cache: dict[str, tuple[float, float, JwtIdentity]] = {}  # sha256 -> (until, exp, identity)
        self._key: Any = None
        if config.symmetric:
            self._key = self._secret(os.environ if environ is None else environ).encode()
        elif config.public_key_file is not None:
            self._key = self._public_key(config.public_key_file)
        else:
            self._load_jwks()

    # -- key material (read at start-up: a bad file fails the server, not the first request) --------------
    def _secret(self, environ: Mapping[str, str]) -> str:
        c = self.config
        secret = c.secret if c.secret is not None else environ.get(c.secret_env or "", "")
        where = "auth.jwt.secret" if c.secret is not None else f"environment variable {c.secret_env}"
        if not secret:
            raise InvalidInputError(f"the JWT secret is not set: {where} is empty", field="auth.jwt.secret_env")
        if len(secret.encode()) < _MIN_SECRET_BYTES:
            raise InvalidInputError(
                f"the JWT secret in {where} is shorter than {_MIN_SECRET_BYTES} bytes", field="auth.jwt.secret_env"
            )
        return secret

    def _public_key(self, path: os.PathLike[str]) -> Any:
        try:
            pem = open(path, "rb").read()
        except OSError as e:
            raise InvalidInputError(
                f"cannot read auth.jwt.public_key_file: {e}", field="auth.jwt.public_key_file"
            ) from None
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            return load_pem_public_key(pem)
        except ValueError:
            raise InvalidInputError(
                f"auth.jwt.public_key_file {str(path)!r} is not a PEM public key", field="auth.jwt.public_key_file"
            ) from None

    def _load_jwks(self) -> None:
        path = self.config.jwks_file
        assert path is not None
        try:
            mtime = path.stat().st_mtime
            keys = jwt.PyJWKSet.from_json(path.read_text())
        except (OSError, jwt.PyJWKSetError, ValueError) as e:
            if self._jwks:  # a rotation half-written: keep the keys we have
                return
            raise InvalidInputError(f"auth.jwt.jwks_file: {e}", field="auth.jwt.jwks_file") from None
        self._jwks = {str(k.key_id or ""): k for k in keys.keys}
        self._jwks_mtime = mtime

    def _jwk(self, kid: Any) -> Any:
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values())).key
        if not isinstance(kid, str):
            raise _bad("the token has no 'kid' header to pick a key of the JWKS")
        found = self._jwks.get(kid)
        if found is None:
            path = self.config.jwks_file
            assert path is not None
            try:
                changed = path.stat().st_mtime != self._jwks_mtime
            except OSError:
                changed = False
            if changed:  # keys rotated since start-up: read the file again
                self._load_jwks()
                found = self._jwks.get(kid)
        if found is None:
            raise _bad("its key id ('kid') is not in the configured JWKS")
        return found.key

    # -- the request path ----------------------------------------------------------------------------------
    def verify(self, token: str) -> JwtIdentity:
        """The identity a valid token carries; 401 (invalid, expired, wrong audience ...) or 403 (no scope)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(digest)
        now = time.time()
        if hit is not None and now < hit[0] and now < hit[1] + self.config.leeway_s:
            return hit[2]
        claims, kid = self._decode(token)
        ident = self._identity(claims, kid)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (now + _CACHE_S, float(claims["exp"]), ident)
        return ident

    def _decode(self, token: str) -> tuple[dict[str, Any], Any]:
        c = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _bad("not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in c.algorithms:
            raise _bad(f"algorithm {alg!r} is not accepted here (allowed: {', '.join(c.algorithms)})")
        key = self._key if self._key is not None else self._jwk(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(c.algorithms),
                audience=list(c.audience),
                issuer=c.issuer,
                leeway=c.leeway_s,
                options={"require": ["exp"] + (["iss"] if c.issuer else [])},
            )
        except jwt.ExpiredSignatureError:
            raise _bad("it has expired ('exp')") from None
        except jwt.ImmatureSignatureError:
            raise _bad("it is not valid yet ('nbf' or 'iat' in the future)") from None
        except jwt.InvalidAudienceError:
            raise _bad(f"its audience ('aud') is not {' or '.join(c.audience)}") from None
        except jwt.InvalidIssuerError:
            raise _bad(f"its issuer ('iss') is not {c.issuer}") from None
        except jwt.MissingRequiredClaimError as e:
            raise _bad(f"it has no {e.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise _bad("the signature does not verify") from None
        except jwt.PyJWTError as e:  # malformed claims, a key that does not fit the algorithm ...
            raise _bad(type(e).__name__) from None
        return claims, header.get("kid")

    def _identity(self, claims: dict[str, Any], kid: Any) -> JwtIdentity:
        c = self.config
        names = c.claims
        ws = next((claims[n] for n in names.workspace if claims.get(n) not in (None, "")), None)
        if not isinstance(ws, str):
            raise _bad(f"it names no workspace (claim {' or '.join(names.workspace)})")
        try:
            check_workspace(ws)
        except ContextStoreError:
            raise _bad("its workspace claim is not a workspace name") from None
        raw = claims.get(names.scope)
        granted = set(raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else [])
        scope = next((s for s in _BROADEST if s in granted), None)
        if scope is None:
            raise ForbiddenError(
                f"this token grants no context-store scope (claim {names.scope!r}: read, ingest, admin or metrics)",
                field=_FIELD,
            )
        sub = claims.get(names.subject)
        subject: Subject | None = None
        if c.subject_join_key is not None:
            if isinstance(sub, (str, int)) and not isinstance(sub, bool) and str(sub):
                subject = Subject(c.subject_join_key, str(sub))
            elif c.require_subject:
                raise _bad(f"it has no {names.subject!r} claim; this server binds tokens to a {c.subject_join_key}")
        issuer = kid if isinstance(kid, str) and kid else claims.get("iss") or "-"
        who = str(sub) if isinstance(sub, (str, int)) else "-"
        return JwtIdentity(ws, scope, f"jwt:{str(issuer)[:64]}:{who[:128]}", subject)
