"""Event deduplication key: job_events.dedup_key.

A worker retries an event write through a database outage; when a try committed but its acknowledgement
was lost, the retry finds the event by this key instead of writing it twice.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 09:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("dedup_key", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("dedup_key")
