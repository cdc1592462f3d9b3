"""queue position: an index that counts the jobs ahead of a queued job

Revision ID: 0011_queue_position
Revises: 0010_ddp
Create Date: 2026-12-01 14:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0011_queue_position"
down_revision = "0010_ddp"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_queue_position", "jobs",
                    ["status", "queue", "priority", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_position", table_name="jobs")
