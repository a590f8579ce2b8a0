"""erp_ack_rejection: every ack file refused and moved to <ack_path>/error/

Revision ID: 0002_ack_rejections
Revises: 0001_initial
Create Date: 2025-01-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_ack_rejections"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # No foreign keys on purpose: a rejection may name no export (an ack for a
    # file this ledger never wrote) and must outlive the rows it mentions.
    op.create_table(
        "erp_ack_rejection",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("erp_connection_id", sa.Uuid(), nullable=False),
        sa.Column("export_id", sa.Uuid(), nullable=True),
        sa.Column("ack_file", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("moved_to", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erp_ack_rejection")),
        sa.UniqueConstraint(
            "erp_connection_id", "moved_to", name=op.f("uq_erp_ack_rejection_erp_connection_id_moved_to")
        ),
    )
    op.create_index(
        "idx_erp_ack_rejection_connection",
        "erp_ack_rejection",
        ["erp_connection_id", sa.text("created_at DESC")],
    )
    op.create_index(
        "idx_erp_ack_rejection_org",
        "erp_ack_rejection",
        ["org_id", sa.text("created_at DESC")],
    )


def downgrade() -> None:
    op.drop_table("erp_ack_rejection")
