"""Server-side web sessions for trio."""

from __future__ import annotations

from ._abc import DEFAULT_MAX_SIZE as DEFAULT_MAX_SIZE
from ._abc import ConditionalStorage as ConditionalStorage
from ._abc import Consumer as Consumer
from ._abc import Provider as Provider
from ._abc import PurgeResult as PurgeResult
from ._abc import SessionStorage as SessionStorage
from ._abc import SupportsPurge as SupportsPurge
from ._abc import SupportsTouch as SupportsTouch
from ._abc import Versioned as Versioned
from ._base import ChunkSink as ChunkSink
from ._base import ChunkSource as ChunkSource
from ._base import ConditionalBase as ConditionalBase
from ._base import StorageBase as StorageBase
from ._errors import InvalidSessionId as InvalidSessionId
from ._errors import SessionNotFound as SessionNotFound
from ._errors import SessionTooLarge as SessionTooLarge
from ._errors import StorageError as StorageError
from ._errors import TrioSessionsError as TrioSessionsError
from ._errors import WriteConflict as WriteConflict
from ._ids import SESSION_ID_PATTERN as SESSION_ID_PATTERN
from ._ids import check_session_id as check_session_id
from ._ids import new_session_id as new_session_id
from .sessions._cookies import CookieOptions as CookieOptions
from .sessions._lifecycle import StorageSource as StorageSource
from .sessions._manager import SessionDataError as SessionDataError
from .sessions._manager import SessionManager as SessionManager
from .sessions._serializers import JSONSerializer as JSONSerializer
from .sessions._serializers import Serializer as Serializer
from .sessions._session import Session as Session
from .sessions._session import SessionNotLoaded as SessionNotLoaded
from .sessions._signing import SecretKey as SecretKey
from .sessions._web import Autoload as Autoload
from .storages._bytes import BytesStorage as BytesStorage
from .storages._cache import CacheStorage as CacheStorage
from .storages._cache import CacheStorageStatistics as CacheStorageStatistics
from .storages._cache import open_cache_storage as open_cache_storage
from .storages._directory import DirectoryScan as DirectoryScan
from .storages._directory import DirectoryStorage as DirectoryStorage
from .storages._memory import MemoryStorage as MemoryStorage
from .storages._memory import MemoryStorageStatistics as MemoryStorageStatistics
from .storages._postgres import PostgresStorage as PostgresStorage
from .storages._postgres import PostgresStorageStatistics as PostgresStorageStatistics
from .storages._postgres import open_postgres_storage as open_postgres_storage
from .storages._redis import DriverName as DriverName
from .storages._redis import RedisClient as RedisClient
from .storages._redis import RedisStorage as RedisStorage
from .storages._redis import RedisStorageStatistics as RedisStorageStatistics
from .storages._redis import open_redis_storage as open_redis_storage

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_MAX_SIZE",
    "SESSION_ID_PATTERN",
    "Autoload",
    "BytesStorage",
    "CacheStorage",
    "CacheStorageStatistics",
    "ChunkSink",
    "ChunkSource",
    "ConditionalBase",
    "ConditionalStorage",
    "Consumer",
    "CookieOptions",
    "DirectoryScan",
    "DirectoryStorage",
    "DriverName",
    "InvalidSessionId",
    "JSONSerializer",
    "MemoryStorage",
    "MemoryStorageStatistics",
    "PostgresStorage",
    "PostgresStorageStatistics",
    "Provider",
    "PurgeResult",
    "RedisClient",
    "RedisStorage",
    "RedisStorageStatistics",
    "SecretKey",
    "Serializer",
    "Session",
    "SessionDataError",
    "SessionManager",
    "SessionNotFound",
    "SessionNotLoaded",
    "SessionStorage",
    "SessionTooLarge",
    "StorageBase",
    "StorageError",
    "StorageSource",
    "SupportsPurge",
    "SupportsTouch",
    "TrioSessionsError",
    "Versioned",
    "WriteConflict",
    "check_session_id",
    "new_session_id",
    "open_cache_storage",
    "open_postgres_storage",
    "open_redis_storage",
]
