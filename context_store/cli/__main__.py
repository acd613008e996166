"""``python -m context_store.cli`` == ``context-store``."""

from .main import main

main()
