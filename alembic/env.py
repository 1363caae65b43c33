"""Alembic env.py for an application that uses semsearch.

The standard env.py with two additions, marked "semsearch": the import that registers the operations
and autogenerate support, and the include_name filter that keeps semsearch's own schema (registry,
queue, stores) out of comparisons. Copy it over the one `alembic init` writes and change the import of
your models. The database URL comes from DATABASE_URL when set, else from alembic.ini.
"""
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

import semsearch.migrations  # semsearch: op.create_search_index & co, autogenerate
from myapp.models import Base  # your models' declarative base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
if os.environ.get("DATABASE_URL"):
    config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"].replace("%", "%%"))

target_metadata = Base.metadata
options = dict(
    target_metadata=target_metadata,
    include_schemas=True,
    include_name=semsearch.migrations.include_name,  # semsearch: leave its own schema alone
)


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, **options)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
