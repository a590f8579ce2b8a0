"""`dropzone dev` and `dropzone demo`: the embedded stack in the foreground."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from starter.cli.common import app, handle_errors, out, run

DEFAULT_DATA_DIR = Path(".dropzone")

DATA_DIR_OPTION = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Where every server keeps its data (kept across restarts).")
TEMPORAL_PORT_OPTION = typer.Option(7233, "--temporal-port", help="Temporal frontend port on 127.0.0.1.")
UI_PORT_OPTION = typer.Option(8233, "--ui-port", help="Temporal UI port on 127.0.0.1.")
S3_PORT_OPTION = typer.Option(8333, "--s3-port", help="S3 port of the embedded SeaweedFS on 127.0.0.1.")


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C while the servers stop must not abandon some of them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def embedded_stack(data_dir: Path, temporal_port: int, ui_port: int, s3_port: int) -> Iterator[object]:
    from starter.devstack import DevStack, StackPorts

    out.print(f"starting the embedded stack in {data_dir} ...", highlight=False)
    stack = DevStack(data_dir, StackPorts(temporal=temporal_port, temporal_ui=ui_port, s3=s3_port))
    stack.__enter__()  # cleans up after itself if it fails
    try:
        yield stack
    finally:
        with sigint_ignored():
            stack.close()


@app.command("dev")
@handle_errors
def dev_cmd(
    data_dir: Path = DATA_DIR_OPTION,
    erp_simulator: bool = typer.Option(True, "--erp-sim/--no-erp-sim", help="Answer exports with ack files."),
    temporal_port: int = TEMPORAL_PORT_OPTION,
    ui_port: int = UI_PORT_OPTION,
    s3_port: int = S3_PORT_OPTION,
) -> None:
    """Run the embedded stack, a worker and the ERP simulator in the foreground (Ctrl-C stops everything)."""
    from starter.demo import run_dev

    with embedded_stack(data_dir, temporal_port, ui_port, s3_port) as stack:
        run(run_dev(stack, out, erp_simulator=erp_simulator))  # type: ignore[arg-type]
    out.print("stopped", highlight=False)


@app.command("demo")
@handle_errors
def demo_cmd(
    data_dir: Path = DATA_DIR_OPTION,
    count: int = typer.Option(5, "--count", min=1, max=200, help="How many sample orders to export."),
    exit_when_done: bool = typer.Option(False, "--exit", help="Stop the stack once the batch is done."),
    temporal_port: int = TEMPORAL_PORT_OPTION,
    ui_port: int = UI_PORT_OPTION,
    s3_port: int = S3_PORT_OPTION,
) -> None:
    """Bring up the embedded stack, export a batch of sample orders through the ERP simulator, show the results."""
    from starter.demo import run_demo

    with embedded_stack(data_dir, temporal_port, ui_port, s3_port) as stack:
        code = run(run_demo(stack, count=count, exit_when_done=exit_when_done, console=out))  # type: ignore[arg-type]
    raise typer.Exit(code)
