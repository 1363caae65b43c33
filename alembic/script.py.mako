"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""
from semsearch.schema import run_sql_file

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}


def upgrade() -> None:
    run_sql_file("${up_revision}_schema.sql")


def downgrade() -> None:
    raise NotImplementedError("semsearch migrations are forward-only")
