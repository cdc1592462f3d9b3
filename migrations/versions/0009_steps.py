"""steps: training metrics every N optimizer steps (training.log_every_steps)

Revision ID: 0009_steps
Revises: 0008_studies
Create Date: 2026-12-01 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_steps"
down_revision = "0008_studies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_steps",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_steps_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "name", "step", name=op.f("pk_job_steps")),
        sqlite_with_rowid=False,  # rows clustered by (job, metric, step): see app/models.py
    )


def downgrade() -> None:
    op.drop_table("job_steps")
