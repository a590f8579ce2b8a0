"""`dropzone erp-sim`: the ERP simulator pointed at any connection's dropzone.

For trying the pipeline against a staging dropzone before the real ERP is
wired up: it answers every complete export file with an ``ack_`` or
``error_`` file, like the ERP would (see ``starter.erp_sim``).
"""

from __future__ import annotations

import typer

from dropzone.connection_config import parse_connection_config
from dropzone.errors import DropzoneError
from dropzone.settings import load_settings
from starter.cli.common import app, err, handle_errors, open_ledger, out, parse_uuid
from starter.erp_sim import MAX_EXPORT_BYTES

REJECT_CUSTOMER_OPTION = typer.Option(
    None, "--reject-customer", help="Answer orders for this ERP customer number with INVALID_CUSTOMER (repeatable)."
)


@app.command("erp-sim")
@handle_errors
def erp_sim_cmd(
    connection: str = typer.Option(..., "--connection", help="ERP connection UUID whose dropzone to answer."),
    reject_customer: list[str] | None = REJECT_CUSTOMER_OPTION,
    reject_rate: float = typer.Option(
        0.0, "--reject-rate", min=0.0, max=1.0, help="Fraction of valid orders rejected at random (0-1)."
    ),
    delay: float = typer.Option(0.0, "--delay", min=0.0, help="Seconds between seeing an export and answering it."),
    interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between looks at the dropzone."),
    once: bool = typer.Option(False, "--once", help="Answer the exports there now, then exit."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for --reject-rate, for repeatable runs."),
    max_export_bytes: int = typer.Option(
        MAX_EXPORT_BYTES, "--max-export-bytes", min=1,
        help="Larger export files are answered INVALID_FORMAT unread (default 1 GiB; checked by streaming).",
    ),
) -> None:
    """Play the ERP: answer complete export files in a connection's dropzone with ack_/error_ files."""
    from starter.erp_sim import ErpRules, ErpSimulator, open_erp_side

    cid = parse_uuid(connection, "--connection")
    ledger = open_ledger(load_settings())
    try:
        config = parse_connection_config(ledger.get_connection(cid).config)
    finally:
        ledger.dispose()
    rules = ErpRules(reject_customers=set(reject_customer or ()), reject_rate=reject_rate, seed=seed)

    def report_problem(exc: DropzoneError) -> None:
        err.print(f"[yellow]warning:[/] {exc.message}; trying again", highlight=False)

    simulator = ErpSimulator(
        lambda: open_erp_side(config), rules, delay_seconds=delay, interval_seconds=interval,
        max_export_bytes=max_export_bytes,
        on_answer=lambda answer: out.print(answer.describe(), highlight=False),
        on_problem=report_problem,
    )
    where = f"{config.label} {config.export_path} (acks: {config.ack_path or '-'})"
    try:
        if once:
            try:
                answers = simulator.run_once()
            finally:
                simulator.close()
            out.print(f"answered {len(answers)} export(s) in {where}", highlight=False)
            return
        out.print(f"answering exports in {where}; Ctrl-C stops", highlight=False)
        simulator.run()
    except KeyboardInterrupt:
        simulator.close()
        out.print(f"stopped after {len(simulator.answers)} answer(s)", highlight=False)
