"""erp_webhook_event: status callbacks of exports and how their delivery went

Revision ID: 0004_webhook_events
Revises: 0003_api_tokens
Create Date: 2026-12-01 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_webhook_events"
down_revision: str | Sequence[str] | None = "0003_api_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # No foreign keys on purpose: the delivery record must outlive what it mentions.
    op.create_table(
        "erp_webhook_event",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("erp_connection_id", sa.Uuid(), nullable=False),
        sa.Column("draft_order_id", sa.Uuid(), nullable=False),
        sa.Column("export_id", sa.Uuid(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("occurred_at", _TIMESTAMP, nullable=False),
        sa.Column("delivered_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "status IN ('PENDING', 'DELIVERED', 'GAVE_UP')", name=op.f("ck_erp_webhook_event_status")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_erp_webhook_event")),
    )
    op.create_index("idx_erp_webhook_event_draft", "erp_webhook_event", ["draft_order_id", "occurred_at"])


def downgrade() -> None:
    op.drop_table("erp_webhook_event")
