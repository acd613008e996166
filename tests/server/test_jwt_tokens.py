"""JWT bearer tokens: verification edge cases (HS256, RS256 PEM, ES256 JWKS) and the ``auth.jwt`` config."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from context_store.access import Subject
from context_store.config import load_config
from context_store.errors import ForbiddenError, InvalidInputError, UnauthorizedError
from context_store.jwt_config import parse_auth
from context_store.server.auth import authenticate
from context_store.server.keys import KeyStore
from context_store.server.tokens import JwtVerifier
from tests.support.subject import AUDIENCE, JWT_SECRET, make_jwt

CLAIMS = {"sub": "u1", "ws": "shop", "scope": "read"}


def _verifier(root: Path, **jwt_cfg: Any) -> JwtVerifier:
    cfg = parse_auth({"jwt": {"audience": AUDIENCE, "subject_join_key": "user_id", **jwt_cfg}}, root)
    assert cfg is not None
    return JwtVerifier(cfg, environ={"CS_TEST_JWT": JWT_SECRET})


def _refused(v: JwtVerifier, token: str, words: str) -> None:
    with pytest.raises(UnauthorizedError) as e:
        v.verify(token)
    assert words in e.value.message and token not in e.value.message and e.value.field == "Authorization"


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[Any, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "jwt.pem").write_bytes(pem)
    return key, tmp_path / "jwt.pem"


def test_valid_hs256_from_an_environment_secret(tmp_path: Path) -> None:
    v = _verifier(tmp_path, secret_env="CS_TEST_JWT")
    ident = v.verify(make_jwt(CLAIMS))
    assert (ident.workspace, ident.scope, ident.subject) == ("shop", "read", Subject("user_id", "u1"))
    assert ident.key_id == "jwt:-:u1"
    # The broadest known scope counts; unknown OAuth scopes are ignored.
    assert v.verify(make_jwt({**CLAIMS, "scope": "openid read ingest"})).scope == "ingest"
    assert v.verify(make_jwt({**CLAIMS, "scope": ["admin"], "iss": "idp"})).key_id == "jwt:idp:u1"
    with pytest.raises(ForbiddenError):
        v.verify(make_jwt({**CLAIMS, "scope": "openid profile"}))


def test_valid_rs256_and_hs256_refused_when_a_public_key_is_configured(
    tmp_path: Path, rsa_key: tuple[Any, Path]
) -> None:
    key, pem = rsa_key
    v = _verifier(tmp_path, public_key_file=pem.name, algorithms=["RS256"], issuer="https://idp.example")
    token = make_jwt({**CLAIMS, "iss": "https://idp.example"}, key, "RS256", kid="k1")
    ident = v.verify(token)
    assert ident.subject == Subject("user_id", "u1") and ident.key_id == "jwt:k1:u1"
    # Key confusion: an HS256 token "signed" with the public key as secret.
    forged = jwt.encode({**CLAIMS, "aud": AUDIENCE, "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
    _refused(v, forged, "algorithm 'HS256' is not accepted")
    _refused(v, make_jwt({**CLAIMS, "iss": "https://evil.example"}, key, "RS256"), "issuer")
    _refused(v, make_jwt(CLAIMS, key, "RS256"), "'iss'")  # an issuer is configured: required
    # Tampered: the payload of another token with this token's signature.
    other = make_jwt({**CLAIMS, "sub": "u2", "iss": "https://idp.example"}, key, "RS256")
    h, _, sig = token.split(".")
    _refused(v, f"{h}.{other.split('.')[1]}.{sig}", "signature does not verify")


def test_es256_from_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def jwk(key: Any, kid: str) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        return {**d, "kid": kid, "alg": "ES256", "use": "sig"}

    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk(k1, "a")]}))
    v = _verifier(tmp_path, jwks_file="jwks.json")
    assert v.verify(make_jwt(CLAIMS, k1, "ES256", kid="a")).key_id == "jwt:a:u1"
    _refused(v, make_jwt(CLAIMS, k2, "ES256", kid="b"), "'kid'")
    _refused(v, make_jwt(CLAIMS, k2, "ES256", kid="a"), "signature does not verify")
    # A rotated JWKS file is read again for a kid not seen before.
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk(k1, "a"), jwk(k2, "b")]}))
    import os

    os.utime(tmp_path / "jwks.json", (time.time() + 5, time.time() + 5))
    assert v.verify(make_jwt(CLAIMS, k2, "ES256", kid="b")).key_id == "jwt:b:u1"


def test_time_audience_algorithm_and_claim_checks(tmp_path: Path) -> None:
    v = _verifier(tmp_path, secret_env="CS_TEST_JWT")
    now = int(time.time())
    _refused(v, make_jwt({**CLAIMS, "exp": now - 120}), "expired")
    _refused(v, make_jwt({**CLAIMS, "nbf": now + 120}), "not valid yet")
    _refused(v, make_jwt({**CLAIMS, "aud": "another-service"}), "audience")
    _refused(v, make_jwt({**CLAIMS, "exp": None}), "'exp'")
    _refused(v, make_jwt({k: v for k, v in CLAIMS.items() if k != "sub"}), "'sub'")
    _refused(v, make_jwt({k: v for k, v in CLAIMS.items() if k != "ws"}), "workspace")
    _refused(v, make_jwt(CLAIMS, "another-secret-" + "y" * 40), "signature does not verify")
    unsigned = jwt.encode({**CLAIMS, "aud": AUDIENCE, "exp": now + 60}, None, algorithm="none")
    _refused(v, unsigned, "algorithm 'none'")
    _refused(v, "abc.def.ghi", "well-formed")
    # Clock skew within the leeway (30 s) is accepted, beyond it not.
    assert v.verify(make_jwt({**CLAIMS, "exp": now - 10, "nbf": now + 10})).workspace == "shop"
    _refused(v, make_jwt({**CLAIMS, "exp": now - 45}), "expired")
    # Without a subject join key tokens carry no subject; require_subject: false lets them through unbound.
    loose = _verifier(tmp_path, secret_env="CS_TEST_JWT", require_subject=False)
    assert loose.verify(make_jwt({"ws": "shop", "scope": "read"})).subject is None


def test_authenticate_tells_keys_from_jwts(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    try:
        key, _ = keys.create("shop", "read", subject="user_id=u7")
        p = authenticate(f"Bearer {key}", keys)
        assert p.subject == Subject("user_id", "u7") and p.workspace == "shop"
        token = make_jwt(CLAIMS)
        with pytest.raises(UnauthorizedError, match="does not accept JWT"):
            authenticate(f"Bearer {token}", keys)
        p = authenticate(f"Bearer {token}", keys, _verifier(tmp_path, secret_env="CS_TEST_JWT"))
        assert (p.workspace, p.scope, p.subject, p.key_id) == ("shop", "read", Subject("user_id", "u1"), "jwt:-:u1")
    finally:
        keys.close()


@pytest.mark.parametrize(
    ("jwt_cfg", "field", "words"),
    [
        ({"secret_env": "X", "algorithms": ["none"]}, "auth.jwt.algorithms", "never include 'none'"),
        ({"public_key_file": "k.pem", "algorithms": ["HS256"]}, "auth.jwt.algorithms", "public key"),
        ({"secret_env": "X", "algorithms": ["RS256"]}, "auth.jwt.algorithms", "shared secret"),
        ({"secret_env": "X", "jwks_file": "j.json"}, "auth.jwt", "exactly one key source"),
        ({}, "auth.jwt", "exactly one key source"),
        ({"secret_env": "X", "audience": None}, "auth.jwt.audience", "required"),
        ({"secret_env": "X", "leeway_s": 3600}, "auth.jwt.leeway_s", "0..300"),
        ({"secret_env": "X", "subject_join_key": "user id"}, "auth.jwt.subject_join_key", "join key"),
        ({"secret_env": "X", "claims": {"subjekt": "sub"}}, "auth.jwt.claims", "unknown setting"),
        ({"secret_env": "X", "verify": False}, "auth.jwt", "unknown setting auth.jwt.verify"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, jwt_cfg: dict[str, Any], field: str, words: str) -> None:
    cfg = {"online_store": "sqlite", "auth": {"jwt": {"audience": AUDIENCE, **jwt_cfg}}}
    (tmp_path / "context_store.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InvalidInputError) as e:
        load_config(tmp_path)
    assert e.value.field == field and words in e.value.message


def test_config_loads_and_the_secret_is_checked_at_start(tmp_path: Path) -> None:
    cfg = {"auth": {"jwt": {"secret_env": "CS_TEST_JWT", "audience": AUDIENCE, "claims": {"workspace": "tenant"}}}}
    (tmp_path / "context_store.yaml").write_text(yaml.safe_dump(cfg))
    jc = load_config(tmp_path).jwt
    assert jc is not None and jc.algorithms == ("HS256",) and jc.claims.workspace == ("tenant",)
    assert jc.leeway_s == 30.0 and "auth" not in load_config(tmp_path).extra
    with pytest.raises(InvalidInputError, match="CS_TEST_JWT is empty"):
        JwtVerifier(jc, environ={})
    with pytest.raises(InvalidInputError, match="shorter than 32 bytes"):
        JwtVerifier(jc, environ={"CS_TEST_JWT": "short"})
    explicit = parse_auth({"jwt": {"secret": JWT_SECRET, "audience": AUDIENCE}}, tmp_path)
    assert explicit is not None and JWT_SECRET not in repr(explicit)
    ident = JwtVerifier(explicit).verify(make_jwt({"tenant": "x", "ws": "shop", "scope": "read", "sub": "u1"}))
    assert ident.subject is None  # no subject_join_key configured: tokens are not bound to an entity
