"""send safety: blasts remember whether contacts who already received the release were left
out and what content a sender approved; test sends are recorded (per-user cap); API keys get scopes (existing keys keep what they could do, except approve)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import service.db

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
    op.create_table('test_sends',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('release_id', sa.Integer(), nullable=False),
        sa.Column('actor', sa.String(length=320), nullable=False),
        sa.Column('address', sa.String(length=320), nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=False),
        sa.Column('at', service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['release_id'], ['releases.id'],
                                name=op.f('fk_test_sends_release_id_releases'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_test_sends')))
    op.create_index('ix_test_sends_actor_at', 'test_sends', ['actor', 'at'], unique=False)
    op.create_index(op.f('ix_test_sends_release_id'), 'test_sends', ['release_id'], unique=False)


def downgrade() -> None:
    op.drop_table('test_sends')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('scopes')
    with op.batch_alter_table('blasts') as batch:
        batch.drop_column('approved_hash')
        batch.drop_column('already_sent_count')
        batch.drop_column('include_already_sent')
