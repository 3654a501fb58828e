"""tracking: blasts.track, contacts.do_not_track, engagements (opens and clicks per ledger row)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

import service.db

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('blasts') as batch:
        batch.add_column(sa.Column('track', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('contacts') as batch:
        batch.add_column(sa.Column('do_not_track', sa.Boolean(), nullable=True))
    op.create_table(
        'engagements',
        sa.Column('id', _ID, nullable=False),
        sa.Column('queued_message_id', _ID, nullable=False),
        sa.Column('blast_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=10), nullable=False),
        sa.Column('url', sa.String(length=2000), nullable=False),
        sa.Column('is_machine', sa.Boolean(), nullable=False),
        sa.Column('machine_reason', sa.String(length=40), nullable=True),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('first_at', service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_at', service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['blast_id'], ['blasts.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['queued_message_id'], ['queued_messages.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('queued_message_id', 'kind', 'url', 'is_machine'),
    )
    op.create_index(op.f('ix_engagements_blast_id'), 'engagements', ['blast_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_engagements_blast_id'), table_name='engagements')
    op.drop_table('engagements')
    with op.batch_alter_table('contacts') as batch:
        batch.drop_column('do_not_track')
    with op.batch_alter_table('blasts') as batch:
        batch.drop_column('track')
