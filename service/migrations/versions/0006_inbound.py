"""inbound: messages that came back (bounces, complaints, unsubscribes by mail, replies)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

import service.db

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbound_messages',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('blast_id', sa.Integer(), nullable=True),
        sa.Column('contact_id', sa.Integer(), nullable=True),
        sa.Column('queued_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                  nullable=True),
        sa.Column('envelope_from', sa.String(length=320), nullable=True),
        sa.Column('envelope_to', sa.String(length=320), nullable=False),
        sa.Column('from_address', sa.String(length=320), nullable=True),
        sa.Column('subject', sa.Text(), nullable=True),
        sa.Column('text', sa.Text(), nullable=True),
        sa.Column('dsn_status', sa.String(length=20), nullable=True),
        sa.Column('diagnostic', sa.Text(), nullable=True),
        sa.Column('action', sa.String(length=300), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.Column('raw_size', sa.Integer(), nullable=False),
        sa.Column('received_at', service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['blast_id'], ['blasts.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['queued_message_id'], ['queued_messages.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_inbound_messages_kind', 'inbound_messages', ['kind'])
    op.create_index('ix_inbound_messages_blast_id', 'inbound_messages', ['blast_id'])
    op.create_index('ix_inbound_messages_contact_kind', 'inbound_messages', ['contact_id', 'kind'])


def downgrade() -> None:
    op.drop_table('inbound_messages')
