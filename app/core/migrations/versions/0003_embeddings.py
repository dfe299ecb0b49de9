"""passage embeddings, and the sentence a citation's answer came from

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("passages", schema=None) as batch_op:
        # all-MiniLM-L6-v2 vector of the passage's text, float16 little endian (768 bytes)
        batch_op.add_column(sa.Column("embedding", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("citations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sentence_start", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sentence_end", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("citations", schema=None) as batch_op:
        batch_op.drop_column("sentence_end")
        batch_op.drop_column("sentence_start")
    with op.batch_alter_table("passages", schema=None) as batch_op:
        batch_op.drop_column("embedding")
