"""Pipelines: runs (the job history) and schedules.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("pipeline", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("schedule", sa.String(128), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.String(32), nullable=True),
        sa.Column("executor", sa.String(256), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("tracking_error", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_cell", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
    )
    op.create_index("ix_pipeline_runs_created_at", "pipeline_runs", ["created_at"])
    op.create_index("ix_pipeline_runs_pipeline_created", "pipeline_runs", ["pipeline", "created_at"])
    op.create_index("ix_pipeline_runs_status", "pipeline_runs", ["status"])
    op.create_table(
        "pipeline_schedules",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("pipeline", sa.String(256), nullable=False),
        sa.Column("cron", sa.String(128), nullable=False),
        sa.Column("tz", sa.String(64), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("backoff_s", sa.Float(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("alerts", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_due", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_attempt", sa.Integer(), nullable=True),
        sa.Column("retry_of", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("pipeline_schedules")
    op.drop_index("ix_pipeline_runs_status", "pipeline_runs")
    op.drop_index("ix_pipeline_runs_pipeline_created", "pipeline_runs")
    op.drop_index("ix_pipeline_runs_created_at", "pipeline_runs")
    op.drop_table("pipeline_runs")
