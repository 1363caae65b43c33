"""Alembic support: operations, autogenerate, and a filter that keeps semsearch's own schema out of
comparisons. In env.py:

    import semsearch.migrations
    context.configure(..., target_metadata=Base.metadata,
                      include_name=semsearch.migrations.include_name)

Then in a revision (written by hand or by `alembic revision --autogenerate`):

    op.create_search_index("articles_search", "articles", ["title", "body"])
    op.alter_search_index("articles_search", columns=["title"], existing={"columns": ["title", "body"]})
    op.drop_search_index("articles_search")

The operations emit SQL through op.execute, so they work anywhere in a migration, online and in
`alembic upgrade --sql`; the first one of a run also emits the (idempotent) semsearch schema.
"""
from __future__ import annotations

import weakref

from alembic.autogenerate import comparators, renderers
from alembic.operations import MigrateOperation, Operations
from alembic.util import DispatchPriority
from sqlalchemy import text

from .ddl import AlterSearchIndex, DropSearchIndex, install_steps
from .declaration import IndexDefinition, declared_indexes
from .embedders import with_model_dimensions
from .options import ALTERABLE, VERSIONED, IndexOptions

SEMSEARCH_SCHEMA = "semsearch"
_ALTERABLE = ("columns",) + ALTERABLE + VERSIONED + ("maintenance_work_mem",)


def include_name(name, type_, parent_names) -> bool:
    """Alembic include_name hook: leave semsearch's own schema (registry, queue, stores) out of
    autogenerate, so `alembic check` stays clean even with include_schemas=True."""
    if type_ == "schema":
        return name != SEMSEARCH_SCHEMA
    if type_ == "table":
        return parent_names.get("schema_name") != SEMSEARCH_SCHEMA
    return True


# -- operations ------------------------------------------------------------------------------

@Operations.register_operation("create_search_index")
class CreateSearchIndexOp(MigrateOperation):
    """Create a semsearch index (store, HNSW and GIN indexes, triggers) on an existing table."""

    def __init__(self, index_name: str, table_name: str, columns: list[str], *, schema: str | None = None,
                 **options):
        self.definition = IndexDefinition(index_name, table_name, list(columns), schema, IndexOptions(**options))

    @property
    def index_name(self) -> str:
        return self.definition.name

    @classmethod
    def create_search_index(cls, operations: Operations, index_name: str, table_name: str,
                            columns: list[str], *, schema: str | None = None, **options):
        """op.create_search_index("articles_search", "articles", ["title", "body"], model=..., dimensions=...)"""
        return operations.invoke(cls(index_name, table_name, columns, schema=schema, **options))

    def reverse(self) -> "DropSearchIndexOp":
        return DropSearchIndexOp(self.index_name, _reverse=self)

    def to_diff_tuple(self):
        return ("add_search_index", self.definition)


@Operations.register_operation("drop_search_index")
class DropSearchIndexOp(MigrateOperation):
    """Drop a semsearch index: triggers, store and queued work (the source table is untouched)."""

    def __init__(self, index_name: str, *, _reverse: CreateSearchIndexOp | None = None):
        self.index_name = index_name
        self._reverse = _reverse

    @classmethod
    def drop_search_index(cls, operations: Operations, index_name: str):
        """op.drop_search_index("articles_search")"""
        return operations.invoke(cls(index_name))

    def reverse(self) -> CreateSearchIndexOp:
        if self._reverse is None:
            raise ValueError(f"drop_search_index({self.index_name!r}) cannot be reversed: the index's "
                             "definition is unknown; write op.create_search_index(...) in downgrade()")
        return self._reverse

    def to_diff_tuple(self):
        return ("remove_search_index", self.index_name)


@Operations.register_operation("alter_search_index")
class AlterSearchIndexOp(MigrateOperation):
    """Change an index: columns, ts_config, chunk_tokens, chunk_overlap, hnsw_m, hnsw_ef_construction,
    weights, bm25_k1, bm25_b in place; model, dimensions, distance, storage by building a new version in
    the background (the worker does it; queries keep using the current one until it is complete).
    maintenance_work_mem (e.g. "1GB") is what that version's HNSW build may use.

    `existing` holds the previous values of the changed options; it makes the operation reversible.
    """

    def __init__(self, index_name: str, *, existing: dict | None = None, **changes):
        unknown = set(changes) - set(_ALTERABLE)
        if unknown:
            raise TypeError(f"alter_search_index cannot change {', '.join(sorted(unknown))}; it changes "
                            f"{', '.join(_ALTERABLE)}")
        if not changes:
            raise TypeError("alter_search_index needs at least one option to change")
        if "columns" in changes:
            changes["columns"] = list(changes["columns"])
        if not set(changes) - {"maintenance_work_mem"} and "maintenance_work_mem" in changes:
            raise TypeError("maintenance_work_mem goes with a change of model, dimensions, distance or storage")
        IndexOptions(**{k: v for k, v in changes.items() if k not in ("columns", "maintenance_work_mem")})  # validate now
        self.index_name = index_name
        self.changes = changes
        self.existing = dict(existing or {})

    @classmethod
    def alter_search_index(cls, operations: Operations, index_name: str, *, existing: dict | None = None,
                           **changes):
        """op.alter_search_index("articles_search", columns=["title"], existing={"columns": ["title", "body"]})"""
        return operations.invoke(cls(index_name, existing=existing, **changes))

    def reverse(self) -> "AlterSearchIndexOp":
        missing = set(self.changes) - set(self.existing)
        if missing:
            raise ValueError(f"alter_search_index({self.index_name!r}) cannot be reversed: pass the previous "
                             f"value of {', '.join(sorted(missing))} in existing=")
        return AlterSearchIndexOp(self.index_name, existing=self.changes,
                                  **{k: self.existing[k] for k in self.changes})

    def to_diff_tuple(self):
        return ("modify_search_index", self.index_name, self.existing, self.changes)


_installed_in: "weakref.WeakSet" = weakref.WeakSet()


def _ensure_schema(operations: Operations) -> None:
    """The semsearch schema, emitted once per migration run (each statement is idempotent)."""
    context = operations.migration_context
    if context not in _installed_in:
        for step in install_steps():
            operations.execute(step)
        _installed_in.add(context)


@Operations.implementation_for(CreateSearchIndexOp)
def _create_search_index(operations: Operations, operation: CreateSearchIndexOp) -> None:
    _ensure_schema(operations)
    operations.execute(operation.definition.create_ddl())


@Operations.implementation_for(AlterSearchIndexOp)
def _alter_search_index(operations: Operations, operation: AlterSearchIndexOp) -> None:
    _ensure_schema(operations)
    operations.execute(AlterSearchIndex(operation.index_name, operation.changes))


@Operations.implementation_for(DropSearchIndexOp)
def _drop_search_index(operations: Operations, operation: DropSearchIndexOp) -> None:
    _ensure_schema(operations)
    operations.execute(DropSearchIndex(operation.index_name))


# -- autogenerate ------------------------------------------------------------------------------

def _registry(connection) -> dict[str, IndexDefinition]:
    """The indexes the database has, as definitions."""
    if connection.execute(text("SELECT to_regclass('semsearch.indexes') IS NULL")).scalar():
        return {}
    # An index whose new version is being built is compared as that version (its migration has run).
    build = ("LEFT JOIN semsearch.builds b ON b.index_id = i.id" if connection.execute(
        text("SELECT to_regclass('semsearch.builds') IS NOT NULL")).scalar()
        else "LEFT JOIN (SELECT NULL::integer AS index_id, NULL AS model, NULL::integer AS dimensions, NULL AS distance, "
             "NULL AS storage, NULL::integer AS chunk_tokens, NULL::integer AS chunk_overlap) b ON false")
    rows = connection.execute(text(
        """SELECT i.name, c.relname, n.nspname, i.columns::text[] AS columns, coalesce(b.model, i.model) AS model,
                  coalesce(b.dimensions, i.dimensions) AS dimensions, coalesce(b.distance, i.distance) AS distance,
                  i.ts_config::text AS ts_config,
                  CASE WHEN b.index_id IS NULL THEN i.chunk_tokens ELSE b.chunk_tokens END AS chunk_tokens,
                  CASE WHEN b.index_id IS NULL THEN i.chunk_overlap ELSE b.chunk_overlap END AS chunk_overlap,
                  i.hnsw_m, i.hnsw_ef_construction,
                  i.bm25_k1, i.bm25_b, coalesce(b.storage, i.storage) AS storage, (SELECT jsonb_object_agg(c, w) FROM unnest(i.columns::text[], i.column_weights) u(c, w)
                                              WHERE i.column_weights IS NOT NULL)
                      AS weights,
                  n.nspname = current_schema() AS in_default_schema
             FROM semsearch.indexes i JOIN pg_class c ON c.oid = i.source
             JOIN pg_namespace n ON n.oid = c.relnamespace """ + build)).mappings()
    return {
        r["name"]: IndexDefinition(
            r["name"], r["relname"], list(r["columns"]), None if r["in_default_schema"] else r["nspname"],
            IndexOptions(model=r["model"], dimensions=r["dimensions"], distance=r["distance"],
                         ts_config=r["ts_config"], chunk_tokens=r["chunk_tokens"],
                         chunk_overlap=r["chunk_overlap"], hnsw_m=r["hnsw_m"],
                         hnsw_ef_construction=r["hnsw_ef_construction"], weights=r["weights"],
                         bm25_k1=r["bm25_k1"], bm25_b=r["bm25_b"], storage=r["storage"]))
        for r in rows
    }


def _create_op(d: IndexDefinition) -> CreateSearchIndexOp:
    return CreateSearchIndexOp(d.name, d.table, d.columns, schema=d.schema, **with_model_dimensions(d.options).as_dict())


@comparators.dispatch_for("schema", priority=DispatchPriority.LAST)  # after tables: a new table comes first
def _compare_search_indexes(autogen_context, upgrade_ops, schemas) -> None:
    metadata = autogen_context.metadata
    if metadata is None:
        return
    declared: dict[str, IndexDefinition] = {}
    for md in metadata if isinstance(metadata, (list, tuple)) else [metadata]:
        for index in declared_indexes(md):
            declared[index.name] = index.definition()
    existing = _registry(autogen_context.connection)

    for name, wanted in declared.items():
        have = existing.get(name)
        if have is None:
            upgrade_ops.ops.append(_create_op(wanted))
            continue
        wanted_options, have_options = with_model_dimensions(wanted.options), have.options
        if (wanted.table, wanted.schema) != (have.table, have.schema):
            upgrade_ops.ops.append(DropSearchIndexOp(name, _reverse=_create_op(have)))
            upgrade_ops.ops.append(_create_op(wanted))
            continue
        changes, previous = {}, {}
        if list(wanted.columns) != list(have.columns):
            changes["columns"], previous["columns"] = list(wanted.columns), list(have.columns)
        for option in ALTERABLE + VERSIONED:  # (the registry's version: the one being built, if any)
            if getattr(wanted_options, option) != getattr(have_options, option):
                changes[option], previous[option] = getattr(wanted_options, option), getattr(have_options, option)
        if changes:
            upgrade_ops.ops.append(AlterSearchIndexOp(name, existing=previous, **changes))
    for name, have in existing.items():
        if name not in declared:
            upgrade_ops.ops.append(DropSearchIndexOp(name, _reverse=_create_op(have)))


def _import_operations(autogen_context) -> None:
    autogen_context.imports.add("import semsearch.migrations  # noqa: F401  (registers op.*_search_index)")


@renderers.dispatch_for(CreateSearchIndexOp)
def _render_create(autogen_context, op: CreateSearchIndexOp) -> str:
    _import_operations(autogen_context)
    d = op.definition
    args = [repr(d.name), repr(d.table), repr(list(d.columns))]
    if d.schema:
        args.append(f"schema={d.schema!r}")
    args += [f"{k}={v!r}" for k, v in d.options.as_dict().items()]
    return f"op.create_search_index({', '.join(args)})"


@renderers.dispatch_for(DropSearchIndexOp)
def _render_drop(autogen_context, op: DropSearchIndexOp) -> str:
    _import_operations(autogen_context)
    return f"op.drop_search_index({op.index_name!r})"


@renderers.dispatch_for(AlterSearchIndexOp)
def _render_alter(autogen_context, op: AlterSearchIndexOp) -> str:
    _import_operations(autogen_context)
    def plain(options: dict) -> dict:  # weights as a dict, as users write them
        return {k: dict(v or ()) if k == "weights" else v for k, v in options.items()}

    args = [repr(op.index_name)] + [f"{k}={v!r}" for k, v in plain(op.changes).items()]
    args.append(f"existing={plain(op.existing)!r}")
    return f"op.alter_search_index({', '.join(args)})"
