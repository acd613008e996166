"""Credentials never leave the process: one place that masks URL/DSN passwords.

``redact_url("redis://:S3cret@host:6379/0")`` -> ``"redis://:***@host:6379/0"`` (for messages that name
a store); ``redact_text(message)`` masks any URL userinfo, any password-like query parameter and every
secret registered with ``register_url`` (the password of each store URL this process was configured
with), wherever it appears in the text. The boundaries use it: store errors, error bodies, ``/readyz``,
MCP error texts, CLI errors, ``Config``'s repr, and log records (``register_url`` installs a record
factory that redacts every log record of the process; ``RedactingFilter`` does the same on a handler).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "MASK",
    "redact_url",
    "redact_text",
    "register_url",
    "register_secret",
    "known_secrets",
    "RedactingFilter",
]

MASK = "***"
# Secrets shorter than this are only masked inside URLs: masking every "ab" in a message would garble it.
_MIN_SECRET = 4
_SECRET_PARAMS = r"password|passwd|pwd|secret|token|api_key|apikey|access_key|auth"
# scheme://userinfo@ -- userinfo ends at the last '@' before the host; no spaces or quotes inside.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s@'\"<>]*)@")
_SECRET_KEY = re.compile(_SECRET_PARAMS, re.IGNORECASE)
_QUERY = re.compile(rf"(?P<key>[?&;](?:{_SECRET_PARAMS})=)[^&;\s'\"<>#]*", re.IGNORECASE)

_secrets: tuple[str, ...] = ()  # replaced whole (never mutated): readers iterate without a lock
_lock = threading.Lock()
_factory_installed = False


def _mask_userinfo(info: str) -> str:
    user, sep, _password = info.partition(":")
    # "user:pass" keeps the user name; a lone userinfo ("token@host") may itself be the credential.
    return f"{user}:{MASK}" if sep else MASK


def redact_url(url: str) -> str:
    """The URL with its password (and password-like query values) replaced by ``***``; host, port, path
    and database stay, so the message still says which store."""
    out = _USERINFO.sub(lambda m: m.group("scheme") + _mask_userinfo(m.group("info")) + "@", url)
    return _QUERY.sub(lambda m: m.group("key") + MASK, out)


def redact_text(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """``text`` with every URL credential and every known secret masked.

    ``secrets`` defaults to the ones registered by this process (``register_url``/``register_secret``).
    Costs one substring scan per secret when there is nothing to mask.
    """
    found = _secrets if secrets is None else secrets
    if "://" in text or "=" in text:
        text = redact_url(text)
    for s in found:
        if s in text:
            text = text.replace(s, MASK)
    return text


def known_secrets() -> tuple[str, ...]:
    return _secrets


def register_secret(secret: str) -> None:
    """Mask ``secret`` (and its percent-decoded form) in every redacted text and log record from now on."""
    global _secrets
    new = {s for s in (secret, unquote(secret)) if len(s) >= _MIN_SECRET}
    if not new or new <= set(_secrets):
        return
    with _lock:
        # Longest first: a secret that contains another one is masked whole.
        _secrets = tuple(sorted(set(_secrets) | new, key=len, reverse=True))
        _install_record_factory()


# Schemes whose lone userinfo is a user name, never a password (``postgresql://reader@host/db``): masking it
# would also mask that word everywhere else (``context-store[postgres]`` in an install hint).
_USER_NAME_SCHEMES = frozenset({"postgresql", "postgres"})


def register_url(url: str | None) -> None:
    """Register the credentials of a store URL (password, lone userinfo, password-like query values)."""
    if not url or "://" not in url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:  # unparsable: still mask its userinfo wherever the URL itself appears
        m = _USERINFO.search(url)
        if m:
            register_secret(m.group("info").partition(":")[2] or m.group("info"))
        return
    info = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    if info:
        user, sep, password = info.partition(":")
        if sep:
            register_secret(password)
        elif parts.scheme not in _USER_NAME_SCHEMES:  # ``redis://token@host``: a lone userinfo may be a secret
            register_secret(user)
    for key, value in parse_qsl(parts.query):
        if _SECRET_KEY.fullmatch(key):
            register_secret(value)


# -- log records -----------------------------------------------------------------------------------
def _redact_record(record: logging.LogRecord) -> None:
    """Mask the message and the traceback of ``record`` in place (only when they hold something)."""
    try:
        msg = record.getMessage()
    except Exception:  # a bad format string: the handler reports it as usual
        return
    red = redact_text(msg)
    if red != msg:
        # Formatted now: the arguments themselves held the secret.
        record.msg, record.args = red, ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        # Formatters reuse ``exc_text`` (no second formatting). When it held a secret, ``exc_info`` goes too:
        # a handler that renders the exception itself must not find the raw one.
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact_text(text)
        if record.exc_text != text:
            record.exc_info = None
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler filter that masks credentials in every record it passes (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _install_record_factory() -> None:
    """Every log record of the process, from any logger (ours, uvicorn, redis, the MCP SDK), is redacted
    when it is created -- before any handler or test capture sees it. Installed once, with the first secret."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True
