"""Alembic environment for semsearch's own schema (not the application's).

Runs on the connection semsearch.schema.install passes in, keeps its version in
semsearch.alembic_version so it never collides with an application's alembic_version.
"""
from alembic import context
from sqlalchemy import text

connection = context.config.attributes["connection"]
connection.execute(text("CREATE SCHEMA IF NOT EXISTS semsearch"))
context.configure(
    connection=connection,
    version_table="alembic_version",
    version_table_schema="semsearch",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
