"""The Temporal worker: settings → adapters → activity objects → Worker.

Runs until SIGINT/SIGTERM, then stops polling and lets in-flight activities
finish (graceful shutdown) before closing its connection pools.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from activities.acks import AckActivities
from activities.exports import ExportActivities
from dropzone.connectors import ConnectorRegistry, default_registry
from dropzone.crypto import ConfigCipher
from dropzone.errors import DropzoneError, InvalidConfigError, TemporalUnavailableError
from dropzone.ledger import Ledger
from dropzone.settings import Settings, load_settings
from dropzone.transports.object_storage import ObjectStore
from workflows.export_order import ExportOrderWorkflow

GRACEFUL_SHUTDOWN = timedelta(seconds=30)


@dataclass
class Adapters:
    """Everything with a connection pool, built once per worker process."""

    ledger: Ledger
    store: ObjectStore
    connectors: ConnectorRegistry

    def close(self) -> None:
        self.connectors.close()
        self.ledger.dispose()


def build_cipher(settings: Settings) -> ConfigCipher:
    keys = settings.config_key_list()
    if not keys:
        raise InvalidConfigError(
            "DROPZONE_CONFIG_KEYS is not set: connection configs cannot be decrypted "
            "(generate one with 'dropzone keygen')"
        )
    return ConfigCipher(keys)


def build_adapters(settings: Settings) -> Adapters:
    ledger = Ledger.connect(
        settings.require_database_url(), build_cipher(settings), pool_size=settings.database_pool_size
    )
    store = ObjectStore(
        settings.require_s3(),
        settings.s3_bucket,
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        region=settings.s3_region,
    )
    return Adapters(ledger=ledger, store=store, connectors=default_registry())


async def connect_client(settings: Settings) -> Client:
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=pydantic_data_converter,
        )
    except RuntimeError as exc:
        raise TemporalUnavailableError(
            f"cannot reach Temporal at {settings.temporal_address} (namespace {settings.temporal_namespace})"
        ) from exc


def build_worker(
    client: Client,
    adapters: Adapters,
    *,
    task_queue: str,
    executor: ThreadPoolExecutor,
    max_concurrent_activities: int,
) -> Worker:
    exports = ExportActivities(adapters.ledger, adapters.store, adapters.connectors)
    acks = AckActivities(adapters.ledger, adapters.connectors)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ExportOrderWorkflow],
        activities=[
            exports.inspect_draft,
            exports.open_attempt,
            exports.render_and_store,
            exports.deliver,
            exports.mark_failed,
            acks.poll_ack,
        ],
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
    )


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    adapters = build_adapters(settings)
    adapters.store.ensure_bucket()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    client = await connect_client(settings)
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        worker = build_worker(
            client,
            adapters,
            task_queue=settings.task_queue,
            executor=executor,
            max_concurrent_activities=settings.max_concurrent_activities,
        )
        async with worker:
            print(f"worker polling task queue {settings.task_queue!r} on {settings.temporal_address}", flush=True)
            await stop.wait()
    adapters.close()


def main(argv: Sequence[str] | None = None) -> None:
    code = 0
    try:
        asyncio.run(run_worker(load_settings()))
    except DropzoneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: Temporal's core threads can abort it
    # (temporalio/sdk-python#300) after a clean, drained shutdown.
    os._exit(code)


if __name__ == "__main__":
    main()
