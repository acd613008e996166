"""The feature server: Tecton-compatible REST, native endpoints, API keys, limits and metrics."""

from .app import ServerSettings, create_app
from .auth import Principal, authenticate
from .keys import ApiKey, KeyStore

__all__ = ["create_app", "ServerSettings", "Principal", "authenticate", "KeyStore", "ApiKey"]
