"""semsearch schema: registry, queue, failures, triggers, search functions, status view.

Revision ID: 0001
Revises:
"""
from semsearch.schema import run_sql_file

revision = "0001"
down_revision = None


def upgrade() -> None:
    run_sql_file("0001_schema.sql")


def downgrade() -> None:
    raise NotImplementedError("semsearch migrations are forward-only")
