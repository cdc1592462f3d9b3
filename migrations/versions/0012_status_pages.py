"""status pages: an index that reads a page of one status newest first

Revision ID: 0012_status_pages
Revises: 0011_queue_position
Create Date: 2026-12-01 17:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0012_status_pages"
down_revision = "0011_queue_position"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_owner_status_created", "jobs",
                    ["owner", "status", "created_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_status_created", table_name="jobs")
