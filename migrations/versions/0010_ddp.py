"""ddp: worker slots held by a (multi-slot) job, and the GPU each slot stands for

Revision ID: 0010_ddp
Revises: 0009_steps
Create Date: 2026-12-01 10:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_ddp"
down_revision = "0009_steps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("held_by", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("slot_device", sa.String(length=20), nullable=False,
                                   server_default=""))
        batch.create_index(batch.f("ix_workers_held_by"), ["held_by"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_index(batch.f("ix_workers_held_by"))
        batch.drop_column("slot_device")
        batch.drop_column("held_by")
