"""The stores one app holds: the Redis link, the response cache, and the conversation store with its retention job."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.observability.metrics import Metrics
from app.settings import Settings
from app.storage.conversations import ConversationStore
from app.storage.postgres_conversations import PostgresConversationStore
from app.storage.redis_link import RedisLink
from app.storage.response_cache import ResponseCache
from app.storage.sqlite_conversations import SqliteConversationStore

log = logging.getLogger("clawbot.storage")

PURGE_INTERVAL_S = 3600.0


def open_conversation_store(settings: Settings) -> ConversationStore:
    """PostgreSQL when CONVERSATION_DATABASE_URL is set (several replicas), else SQLite under DATA_DIR."""
    if settings.conversation_database_url:
        return PostgresConversationStore(
            settings.conversation_database_url.get_secret_value(),
            retention_days=settings.retention_days,
            pool_size=settings.conversation_database_pool_size,
            retry_window_s=settings.conversation_database_wait_s,
        )
    return SqliteConversationStore(
        settings.data_dir, retention_days=settings.retention_days, journal=settings.conversation_journal
    )


class Storage:
    def __init__(self, *, link: RedisLink | None, cache: ResponseCache, conversations: ConversationStore) -> None:
        self.link = link
        self.cache = cache
        self.conversations = conversations
        self._purge_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> Storage:
        link: RedisLink | None = None
        if settings.redis_url:
            link = RedisLink(settings.redis_url.get_secret_value(), metrics)
            await link.start()
        cache = ResponseCache(metrics, ttl_s=settings.cache_ttl_s, max_entries=settings.cache_max_entries, link=link)
        conversations = await asyncio.to_thread(open_conversation_store, settings)
        self = cls(link=link, cache=cache, conversations=conversations)
        self._purge_task = asyncio.create_task(self._purge_forever(), name="conversation-retention")
        log.info("storage ready", extra={"redis": link is not None, "conversations": conversations.location})
        return self

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.conversations.purge()
            except Exception as exc:
                log.error("conversation retention purge failed", extra={"error_type": type(exc).__name__})
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def close(self) -> None:
        if self._purge_task is not None:
            self._purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._purge_task
        if self.link is not None:
            await self.link.close()
        await asyncio.to_thread(self.conversations.close)
