"""`dropzone erp-sim`: the ERP simulator pointed at any connection's dropzone."""

from __future__ import annotations
