"""blasts: attach_pdf, the per-blast option to attach the release as a PDF to every message

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('blasts') as batch:
        batch.add_column(sa.Column('attach_pdf', sa.Boolean(), server_default=sa.false(),
                                   nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('blasts') as batch:
        batch.drop_column('attach_pdf')
