"""The ``auth: jwt:`` section of ``context_store.yaml``: JWT bearer tokens verified locally (no network).

```yaml
auth:
  jwt:
    # One key source. HS*: a shared secret, read from the environment variable named here (the secret
    # itself may be given as ``secret:``, but then it sits in the repo). RS*/ES*/PS*/EdDSA: a PEM public
    # key file or a JWKS file (keys picked by the token's ``kid``).
    secret_env: CONTEXT_STORE_JWT_SECRET
    # public_key_file: keys/jwt.pem
    # jwks_file: keys/jwks.json
    algorithms: [HS256]          # allow-list; default HS256 for a secret, RS256 and ES256 for public keys
    audience: context-store      # required: the ``aud`` a token must carry
    issuer: https://auth.example.com   # optional: the ``iss`` a token must carry
    leeway_s: 30                 # clock skew accepted on exp/nbf/iat (0..300)
    claims:
      workspace: [ws, workspace] # first claim present names the workspace
      scope: scope               # "read", "read ingest" or a list; the broadest known scope counts
      subject: sub               # the entity the token is bound to ...
    subject_join_key: user_id    # ... as user_id=<sub>; unset: tokens are not bound to an entity
    require_subject: true        # with subject_join_key: a token without the subject claim is refused
```

Key files and the secret are read when the server starts (``server/tokens.py``), so commands that never
verify a token do not need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = ["JwtConfig", "JwtClaims", "parse_auth", "HMAC_ALGORITHMS", "PUBLIC_KEY_ALGORITHMS", "LEEWAY_MAX_S"]

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LEEWAY_MAX_S = 300.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")
_JWT_KEYS = (
    "secret_env",
    "secret",
    "public_key_file",
    "jwks_file",
    "algorithms",
    "audience",
    "issuer",
    "leeway_s",
    "claims",
    "subject_join_key",
    "require_subject",
)
_CLAIM_KEYS = ("workspace", "scope", "subject")
_F = "auth.jwt"


@dataclass(frozen=True, slots=True)
class JwtClaims:
    """Which claims carry the workspace (first present wins), the scopes and the subject."""

    workspace: tuple[str, ...] = ("ws", "workspace")
    scope: str = "scope"
    subject: str = "sub"


@dataclass(frozen=True, repr=False)
class JwtConfig:
    algorithms: tuple[str, ...]
    audience: tuple[str, ...]
    issuer: str | None = None
    secret_env: str | None = None
    secret: str | None = field(default=None, compare=False)  # never shown (repr below)
    public_key_file: Path | None = None
    jwks_file: Path | None = None
    leeway_s: float = 30.0
    claims: JwtClaims = JwtClaims()
    subject_join_key: str | None = None
    require_subject: bool = True

    @property
    def symmetric(self) -> bool:
        return self.public_key_file is None and self.jwks_file is None

    def __repr__(self) -> str:
        source = (
            f"secret_env={self.secret_env!r}"
            if self.secret_env
            else "secret=***"
            if self.secret
            else f"public_key_file={str(self.public_key_file or self.jwks_file)!r}"
        )
        return (
            f"JwtConfig(algorithms={self.algorithms!r}, {source}, audience={self.audience!r}, issuer={self.issuer!r})"
        )


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise InvalidInputError(f"{_F}.{name} must be a non-empty string", field=f"{_F}.{name}")
    return v.strip()


def _names(v: Any, name: str) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise InvalidInputError(f"{_F}.{name} must be a string or a non-empty list of strings", field=f"{_F}.{name}")
    return tuple(x.strip() for x in items)


def _mapping(v: Any, name: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise InvalidInputError(f"{name} must be a mapping", field=name)
    unknown = sorted(set(v) - set(known))
    if unknown:
        raise InvalidInputError(f"unknown setting {name}.{unknown[0]}; known: {', '.join(known)}", field=name)
    return v


def _algorithms(v: Any, symmetric: bool) -> tuple[str, ...]:
    if v is None:
        return ("HS256",) if symmetric else ("RS256", "ES256")
    algs = _names(v, "algorithms")
    allowed = HMAC_ALGORITHMS if symmetric else PUBLIC_KEY_ALGORITHMS
    for a in algs:
        if a.lower() == "none":
            raise InvalidInputError(f"{_F}.algorithms must never include 'none'", field=f"{_F}.algorithms")
        if a not in allowed:
            why = (
                "a public key or JWKS is configured: HS* would let anyone holding the public key sign tokens"
                if a in HMAC_ALGORITHMS
                else "a shared secret is configured"
                if a in PUBLIC_KEY_ALGORITHMS
                else "unknown algorithm"
            )
            raise InvalidInputError(
                f"{_F}.algorithms: {a!r} is not allowed ({why}); use {', '.join(allowed)}", field=f"{_F}.algorithms"
            )
    return algs


def parse_auth(value: Any, root: Path) -> JwtConfig | None:
    """The yaml ``auth`` mapping -> ``JwtConfig`` (None without ``auth.jwt``); 400 naming the setting otherwise."""
    if value is None:
        return None
    auth = _mapping(value, "auth", ("jwt",))
    if auth.get("jwt") is None:
        return None
    j = _mapping(auth["jwt"], _F, _JWT_KEYS)
    secret_env = None if j.get("secret_env") is None else _str(j["secret_env"], "secret_env")
    secret = None if j.get("secret") is None else _str(j["secret"], "secret")
    files = {
        k: None if j.get(k) is None else Path(_str(j[k], k)).expanduser() for k in ("public_key_file", "jwks_file")
    }
    given = [k for k, v in (("secret_env", secret_env), ("secret", secret), *files.items()) if v is not None]
    if len(given) != 1:
        raise InvalidInputError(
            f"{_F} needs exactly one key source: secret_env, secret, public_key_file or jwks_file"
            + (f" (got {', '.join(given)})" if given else ""),
            field=_F,
        )
    symmetric = given[0] in ("secret_env", "secret")
    aud = j.get("audience")
    if aud is None:
        raise InvalidInputError(
            f"{_F}.audience is required: the 'aud' a token must carry (tokens for other services are refused)",
            field=f"{_F}.audience",
        )
    leeway = j.get("leeway_s", 30)
    if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or not 0 <= leeway <= LEEWAY_MAX_S:
        raise InvalidInputError(
            f"{_F}.leeway_s must be a number of seconds in 0..{LEEWAY_MAX_S:g}, got {leeway!r}", field=f"{_F}.leeway_s"
        )
    c = _mapping(j.get("claims") or {}, f"{_F}.claims", _CLAIM_KEYS)
    d = JwtClaims()
    claims = JwtClaims(
        workspace=_names(c["workspace"], "claims.workspace") if "workspace" in c else d.workspace,
        scope=_str(c["scope"], "claims.scope") if "scope" in c else d.scope,
        subject=_str(c["subject"], "claims.subject") if "subject" in c else d.subject,
    )
    join_key = j.get("subject_join_key")
    if join_key is not None and (not isinstance(join_key, str) or not _NAME.match(join_key)):
        raise InvalidInputError(
            f"{_F}.subject_join_key must be a join key name such as user_id, got {join_key!r}",
            field=f"{_F}.subject_join_key",
        )
    require = j.get("require_subject", True)
    if not isinstance(require, bool):
        raise InvalidInputError(f"{_F}.require_subject must be true or false", field=f"{_F}.require_subject")
    return JwtConfig(
        algorithms=_algorithms(j.get("algorithms"), symmetric),
        audience=_names(aud, "audience"),
        issuer=None if j.get("issuer") is None else _str(j["issuer"], "issuer"),
        secret_env=secret_env,
        secret=secret,
        public_key_file=None if files["public_key_file"] is None else root / files["public_key_file"],
        jwks_file=None if files["jwks_file"] is None else root / files["jwks_file"],
        leeway_s=float(leeway),
        claims=claims,
        subject_join_key=join_key,
        require_subject=require,
    )
