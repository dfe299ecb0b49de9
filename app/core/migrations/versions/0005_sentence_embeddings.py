"""the vectors of each passage's sentences

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("passages", schema=None) as batch_op:
        # sentence count, (start, end) offsets int32, then all-MiniLM-L6-v2 vectors float16, little endian
        batch_op.add_column(sa.Column("sentence_embeddings", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("passages", schema=None) as batch_op:
        batch_op.drop_column("sentence_embeddings")
