"""PostgreSQL's own full-text search on passages: a tsvector (english) with a GIN index

On SQLite the FTS5 table of 0002 stays; this revision does nothing there. On PostgreSQL each passage
gets `tsv`, the english-stemmed lexemes of its text (cut from its document's text on the server, so
the text never travels twice), searched with `@@` through a GIN index and ranked with ts_rank_cd.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The passages of documents (all, or those matching a WHERE on `p`) indexed from their document's text.
# PostgreSQL's substr counts characters from 1, Python's offsets count characters from 0.
FILL_TSV = ("UPDATE passages AS p SET tsv = to_tsvector('english', substr(d.text, p.char_start + 1, "
            "p.char_end - p.char_start)) FROM documents AS d WHERE d.id = p.document_id")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE passages ADD COLUMN tsv tsvector")
    op.execute(FILL_TSV)
    op.execute("CREATE INDEX ix_passages_tsv ON passages USING gin (tsv)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_passages_tsv")
    op.execute("ALTER TABLE passages DROP COLUMN tsv")
