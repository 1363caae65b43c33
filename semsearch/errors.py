"""Exceptions that say what went wrong and what to do about it."""


class SemsearchError(Exception):
    """Base class: a message meant for the person running the command."""


class DatabaseUnavailable(SemsearchError):
    """The database cannot be reached."""


class PgvectorMissing(SemsearchError):
    """The server has no pgvector extension available."""


class ModelUnavailable(SemsearchError):
    """The embedding model cannot be loaded."""


class NotInstalled(SemsearchError):
    """The database has no semsearch schema yet."""

    @classmethod
    def in_database(cls, database: str | None) -> "NotInstalled":
        return cls(
            f"semsearch is not installed in database {database!r}: there is no semsearch schema yet.\n"
            "Create your search indexes with Base.metadata.create_all(engine) or an Alembic migration "
            "(op.create_search_index): either installs semsearch too (`semsearch install` installs the schema alone)."
        )


class UnknownIndex(SemsearchError):
    """A search index name that does not exist in the database."""


class InvalidQuery(SemsearchError, ValueError):
    """A search argument out of range (limit, candidates, rrf_k, weights, query vector)."""


class EmbedderUnavailable(SemsearchError):
    """The embedding service as a whole is failing (down, overloaded, misconfigured), not one input:
    the worker waits for it, and the rows keep their attempts."""


class EmbedderMisconfigured(ModelUnavailable):
    """The embedding service refuses the index's spec (unknown URL or model, a refused key): the index
    cannot be served until someone fixes it, as with a model that cannot load."""


def server_message(exc: BaseException) -> str:
    """A database error as the server put it: its message, and its hint on the next line."""
    diag = getattr(exc, "diag", None)
    message = (diag.message_primary if diag is not None and diag.message_primary else str(exc)).strip()
    return message + (f"\nhint: {diag.message_hint}" if diag is not None and diag.message_hint else "")
