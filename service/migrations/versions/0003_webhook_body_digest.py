"""webhook deliveries remember a digest of the body they answered, so a webhook-id reused with
another body is refused (409) instead of silently answered with the first delivery's result

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_deliveries') as batch:
        # Deliveries stored before this column existed have none: their replays are not compared.
        batch.add_column(sa.Column('body_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.drop_column('body_sha256')
