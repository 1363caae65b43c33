"""semsearch: Postgres-native semantic search for SQLAlchemy models."""
from .declaration import IndexDefinition, SearchIndex
from .errors import DatabaseUnavailable, ModelUnavailable, PgvectorMissing, SemsearchError
from .schema import install
from .worker import Worker

__all__ = ["SearchIndex", "IndexDefinition", "Worker", "install", "SemsearchError",
           "DatabaseUnavailable", "PgvectorMissing", "ModelUnavailable"]
__version__ = "0.1.0"
