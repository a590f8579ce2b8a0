"""`dropzone dev` and `dropzone demo`: the embedded stack."""

from __future__ import annotations

from pathlib import Path

import typer

from starter.cli.common import (
    app,
    handle_errors,
    out,
    run,
)

DEFAULT_DATA_DIR = Path(".dropzone")


@app.command("dev")
@handle_errors
def dev_cmd(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Where every server keeps its data."),
    erp_simulator: bool = typer.Option(True, "--erp-sim/--no-erp-sim", help="Answer exports with ack files."),
    temporal_port: int = typer.Option(7233, "--temporal-port"),
    ui_port: int = typer.Option(8233, "--ui-port"),
    s3_port: int = typer.Option(8333, "--s3-port"),
) -> None:
    """Run the embedded stack and a worker in the foreground (Ctrl-C stops everything)."""
    from starter.demo import run_dev
    from starter.devstack import DevStack, StackPorts

    out.print(f"starting the embedded stack in {data_dir} ...")
    with DevStack(data_dir, StackPorts(temporal=temporal_port, temporal_ui=ui_port, s3=s3_port)) as stack:
        try:
            run(run_dev(stack, out, erp_simulator=erp_simulator))
        except KeyboardInterrupt:
            out.print("stopping ...")


@app.command("demo")
@handle_errors
def demo_cmd(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir"),
    count: int = typer.Option(5, "--count", min=1, max=200, help="How many sample orders to export."),
    exit_when_done: bool = typer.Option(False, "--exit", help="Stop the stack once the batch is done."),
    temporal_port: int = typer.Option(7233, "--temporal-port"),
    ui_port: int = typer.Option(8233, "--ui-port"),
    s3_port: int = typer.Option(8333, "--s3-port"),
) -> None:
    """Bring up the embedded stack, export a batch of sample orders through the ERP simulator, show the results."""
    from starter.demo import run_demo
    from starter.devstack import DevStack, StackPorts

    out.print(f"starting the embedded stack in {data_dir} ...")
    with DevStack(data_dir, StackPorts(temporal=temporal_port, temporal_ui=ui_port, s3=s3_port)) as stack:
        try:
            code = run(run_demo(stack, count=count, exit_when_done=exit_when_done, console=out))
        except KeyboardInterrupt:
            code = 0
    raise typer.Exit(code)
