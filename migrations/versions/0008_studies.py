"""studies: hyperparameter studies and their trials

Revision ID: 0008_studies
Revises: 0007_prod
Create Date: 2026-12-01 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_studies"
down_revision = "0007_prod"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("objective", sa.JSON(), nullable=False),
        sa.Column("searcher", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("trials_created", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_studies_state"), ["state"], unique=False)
        batch_op.create_index("ix_studies_owner_created", ["owner", "created_at", "id"],
                              unique=False)
    op.create_table(
        "study_trials",
        sa.Column("study_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("sampler_attrs", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("rung", sa.Integer(), nullable=False),
        sa.Column("rung_values", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("value_epoch", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"],
                                name=op.f("fk_study_trials_study_id_studies"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"],
                                name=op.f("fk_study_trials_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("study_id", "number", name=op.f("pk_study_trials")),
        sa.UniqueConstraint("job_id", name=op.f("uq_study_trials_job_id")),
    )
    with op.batch_alter_table("study_trials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_trials_state"), ["state"], unique=False)


def downgrade() -> None:
    op.drop_table("study_trials")
    op.drop_table("studies")
