"""Articles and their search index: the README's hand-written migration, complete.

tests/test_readme.py runs it in a project made by `alembic init`, with alembic/env.py and
examples/alembic/myapp/models.py: upgrade, `alembic check` (clean), downgrade.
"""
import sqlalchemy as sa
from alembic import op

import semsearch.migrations  # noqa: F401  (registers op.create_search_index & co; env.py imports it too)

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("articles",
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("title", sa.String, nullable=False),
                    sa.Column("body", sa.String, nullable=False))
    op.create_search_index("articles_search", "articles", ["title", "body"])
    op.alter_search_index("articles_search", chunk_tokens=128, hnsw_m=24,
                          existing={"chunk_tokens": None, "hnsw_m": 16})   # existing= makes it reversible


def downgrade():
    op.drop_search_index("articles_search")
    op.drop_table("articles")
