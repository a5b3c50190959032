"""Worker presence: the workers table, one row per live worker main process, renewed by its heartbeat.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(op.f("ix_workers_beat_at"), "workers", ["beat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_beat_at"), table_name="workers")
    op.drop_table("workers")
