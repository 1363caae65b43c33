"""Alembic operations for application migrations: op.create_search_index / op.drop_search_index.

Import this module in your migration environment (env.py) to register them:

    import semsearch.migrations  # noqa: F401

    def upgrade():
        op.create_search_index("articles_search", "articles", ["title", "body"])

They run the same SQL function (semsearch.create_index) as create_all and `semsearch install`,
and install or upgrade the semsearch schema first when needed.
"""
from __future__ import annotations

from alembic.operations import MigrateOperation, Operations

from .declaration import IndexDefinition, drop_index


@Operations.register_operation("create_search_index")
class CreateSearchIndexOp(MigrateOperation):
    """Create a semsearch index (store, HNSW and GIN indexes, triggers) on a table."""

    def __init__(self, index_name: str, table_name: str, columns: list[str], *, schema: str | None = None,
                 **options):
        self.definition = IndexDefinition(index_name, table_name, list(columns), schema=schema, **options)

    @classmethod
    def create_search_index(cls, operations: Operations, index_name: str, table_name: str,
                            columns: list[str], *, schema: str | None = None, **options):
        return operations.invoke(cls(index_name, table_name, columns, schema=schema, **options))

    def reverse(self) -> "DropSearchIndexOp":
        return DropSearchIndexOp(self.definition.name)


@Operations.register_operation("drop_search_index")
class DropSearchIndexOp(MigrateOperation):
    """Drop a semsearch index: triggers, store and queued work (the source table is untouched)."""

    def __init__(self, index_name: str):
        self.index_name = index_name

    @classmethod
    def drop_search_index(cls, operations: Operations, index_name: str):
        return operations.invoke(cls(index_name))


@Operations.implementation_for(CreateSearchIndexOp)
def _create_search_index(operations: Operations, operation: CreateSearchIndexOp) -> None:
    from .schema import install

    connection = operations.get_bind()
    install(connection)
    operation.definition.create(connection)


@Operations.implementation_for(DropSearchIndexOp)
def _drop_search_index(operations: Operations, operation: DropSearchIndexOp) -> None:
    drop_index(operations.get_bind(), operation.index_name)
