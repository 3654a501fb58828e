"""send safety: blasts remember whether contacts who already received the release were left
out and what content a sender approved; API keys get scopes (existing keys keep what they could do, except approve)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('blasts') as batch:
        batch.add_column(sa.Column('include_already_sent', sa.Boolean(), server_default=sa.false(),
                                   nullable=False))
        batch.add_column(sa.Column('already_sent_count', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('approved_hash', sa.String(length=64), nullable=True))
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('scopes', sa.String(length=100), server_default='read,write',
                                   nullable=False))
    op.execute("UPDATE api_keys SET scopes = 'read,write,send'")


def downgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('scopes')
    with op.batch_alter_table('blasts') as batch:
        batch.drop_column('approved_hash')
        batch.drop_column('already_sent_count')
        batch.drop_column('include_already_sent')
