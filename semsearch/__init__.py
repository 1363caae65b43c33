"""semsearch: Postgres-native semantic search for SQLAlchemy models."""
from .declaration import IndexDefinition, SearchIndex
from .errors import DatabaseUnavailable, ModelUnavailable, NotInstalled, PgvectorMissing, SemsearchError
from .options import IndexOptions
from .query import apreload, preload
from .schema import ainstall, install
from .worker import Worker

__all__ = ["SearchIndex", "IndexDefinition", "IndexOptions", "Worker", "install", "ainstall", "preload",
           "apreload", "SemsearchError", "DatabaseUnavailable", "PgvectorMissing", "ModelUnavailable",
           "NotInstalled"]
__version__ = "0.1.0"
