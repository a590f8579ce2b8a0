"""erp_connection and erp_export (the order backend's schema plus workflow run columns)

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from the models: a migration must keep
# creating the schema of its own day, whatever the models become later.
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "erp_connection",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("connector_type", sa.Text(), nullable=False),
        sa.Column("config_encrypted", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("last_test_at", _TIMESTAMP, nullable=True),
        sa.Column("last_test_success", sa.Boolean(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erp_connection")),
    )
    op.create_index(
        "idx_erp_connection_org_type", "erp_connection", ["org_id", "connector_type"], unique=True
    )
    op.create_index("idx_erp_connection_org_active", "erp_connection", ["org_id", "active"])

    op.create_table(
        "erp_export",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("erp_connection_id", sa.Uuid(), nullable=False),
        sa.Column("draft_order_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column(
            "export_format_version",
            sa.Text(),
            server_default=sa.text("'orderflow_export_json_v1'"),
            nullable=False,
        ),
        sa.Column("export_storage_key", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("dropzone_path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=20), server_default=sa.text("'PENDING'"), nullable=False),
        sa.Column("erp_order_id", sa.Text(), nullable=True),
        sa.Column("error_json", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("workflow_id", sa.Text(), nullable=True),
        sa.Column("workflow_run_id", sa.Text(), nullable=True),
        sa.Column("run_seq", sa.Integer(), nullable=True),
        sa.Column("sent_at", _TIMESTAMP, nullable=True),
        sa.Column("acked_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", _TIMESTAMP, server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erp_export")),
        sa.ForeignKeyConstraint(
            ["erp_connection_id"],
            ["erp_connection.id"],
            name=op.f("fk_erp_export_erp_connection_id_erp_connection"),
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'SENT', 'ACKED', 'FAILED')",
            name=op.f("ck_erp_export_status"),
        ),
        sa.UniqueConstraint("draft_order_id", "attempt", name=op.f("uq_erp_export_draft_order_id_attempt")),
        # NULLs never collide, so rows written without a workflow run stay possible.
        sa.UniqueConstraint("workflow_run_id", "run_seq", name=op.f("uq_erp_export_workflow_run_id_run_seq")),
    )
    op.create_index("idx_erp_export_filename", "erp_export", ["filename"], unique=True)
    op.create_index(
        "idx_erp_export_draft",
        "erp_export",
        ["org_id", "draft_order_id", sa.text("created_at DESC")],
    )


def downgrade() -> None:
    op.drop_table("erp_export")
    op.drop_table("erp_connection")
