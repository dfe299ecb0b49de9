"""Alembic environment: migrations run on the connection the application hands over."""

from alembic import context

from infini_reader.app.core.db import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic` from the command line: use sqlalchemy.url
    from sqlalchemy import create_engine

    connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: Alembic rebuilds tables instead
)
with context.begin_transaction():
    context.run_migrations()
