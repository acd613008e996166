"""Shared vocabulary at the bottom layer (time, JSON, offline table names): importable by every
module, importing nothing of the project except ``errors``."""
