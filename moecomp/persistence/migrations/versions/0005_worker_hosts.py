"""Workers on other hosts: service keys (worker credentials, admin keys), the worker registry, a job's host.

- service_keys: keys that belong to no team, by role (``worker``: the worker routes; ``admin``: GET /v1/workers);
- workers.host / version / gpus: what each worker reports at start and with its heartbeat;
- jobs.host / node: which host (and which worker's main process) ran the job's latest attempt.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_keys",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_service_keys_prefix"), "service_keys", ["prefix"])
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("host", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("version", sa.String(length=50), nullable=True))
        batch.add_column(sa.Column("gpus", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("host", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("node", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("node")
        batch.drop_column("host")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("gpus")
        batch.drop_column("version")
        batch.drop_column("host")
    op.drop_index(op.f("ix_service_keys_prefix"), table_name="service_keys")
    op.drop_table("service_keys")
