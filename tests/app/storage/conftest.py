"""The real PostgreSQL server the conversation-store tests run against (tests/postgres_server.py)."""

from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures)
