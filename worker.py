"""The Temporal worker: settings → adapters → activity objects → Worker.

Runs until SIGINT/SIGTERM, then stops polling and lets in-flight activities
finish (graceful shutdown) before closing its connection pools.

Operators see it through structured logs on stderr (JSON unless on a terminal,
``DROPZONE_LOG_LEVEL`` / ``DROPZONE_LOG_FORMAT``) and, when
``DROPZONE_METRICS_PORT`` is set, one Prometheus ``/metrics`` endpoint served by
the Temporal runtime: the SDK's own metrics and ours (``activities/telemetry.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import temporalio.activity
import temporalio.workflow
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import Interceptor, Worker
from temporalio.worker.workflow_sandbox import (
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from activities.ack_listener import AckListenerActivities
from activities.acks import AckActivities
from activities.exports import ExportActivities
from activities.webhooks import WebhookActivities
from activities.telemetry import HISTOGRAM_BUCKETS, ExportOwners, TelemetryInterceptor
from dropzone.connectors import ConnectorRegistry, default_registry
from dropzone.crypto import ConfigCipher
from dropzone.errors import DropzoneError, InvalidConfigError, TemporalUnavailableError
from dropzone.ledger import Ledger
from dropzone.logging_setup import configure_logging
from dropzone.object_store import ObjectStore
from dropzone.settings import Settings, invalid_settings_message, load_settings
from dropzone.temporal_connection import connect_options, describe_failure
from starter.codec import build_data_converter
from workflows.policies import DEFAULT_POLICIES, Policies, registered, webhook_task_queue
from workflows.ack_listener import AckListenerWorkflow
from workflows.export_order import ExportOrderWorkflow

GRACEFUL_SHUTDOWN = timedelta(seconds=30)
# Temporal core's own log lines (Rust) join ours through this stdlib logger.
CORE_LOGGER = "temporalio.core"

log = logging.getLogger("dropzone.worker")


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
    # None: the machine's AWS credentials, only with DROPZONE_S3_USE_AMBIENT_CREDENTIALS.
    access_key, secret_key = settings.s3_credentials() or (None, None)
    ledger = Ledger.connect(
        settings.require_database_url(), build_cipher(settings), pool_size=settings.database_pool_size
    )
    store = ObjectStore(settings.require_s3(), settings.s3_bucket, access_key, secret_key, region=settings.s3_region)
    return Adapters(ledger=ledger, store=store, connectors=default_registry())


def setup_logging(settings: Settings) -> None:
    """Structured logs for this process; Temporal's loggers stop appending info dicts to messages."""
    configure_logging(settings.log_level, settings.log_format)
    # The same details arrive as extras, which the formatter turns into fields.
    temporalio.activity.logger.activity_info_on_message = False
    temporalio.workflow.logger.workflow_info_on_message = False


def build_runtime(settings: Settings) -> Runtime:
    """A Temporal runtime whose core logs go through our logging and that serves /metrics if asked.

    One runtime, one endpoint: the SDK's metrics and the ones our activities
    record through the SDK meter.
    """
    bind_address = settings.metrics_bind_address()
    metrics = None
    if bind_address is not None:
        metrics = PrometheusConfig(
            bind_address=bind_address,
            counters_total_suffix=True,
            unit_suffix=True,
            durations_as_seconds=True,
            histogram_bucket_overrides=HISTOGRAM_BUCKETS,
        )
    core_logs = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger(CORE_LOGGER)),
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=metrics, logging=core_logs))
    except ValueError as exc:  # the exporter could not bind
        raise InvalidConfigError(
            f"cannot serve metrics on {bind_address} (DROPZONE_METRICS_HOST/DROPZONE_METRICS_PORT): {exc}"
        ) from None


async def connect_client(settings: Settings, *, runtime: Runtime | None = None) -> Client:
    """The one way anything here talks to Temporal: plaintext, TLS, mTLS or an API key, from settings."""
    options = connect_options(settings)  # bad files fail here, before any network I/O
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=build_data_converter(settings),
            runtime=runtime,
            tls=options.tls,
            api_key=options.api_key,
        )
    except RuntimeError as exc:
        raise TemporalUnavailableError(describe_failure(settings, options, exc)) from exc


def build_workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox, with ``workflows.policies`` shared with this process.

    ``imports_passed_through()`` alone is not enough: inside the sandboxed
    ``workflows`` package, ``from workflows import policies`` loads a fresh
    copy. Configured as passthrough, there is one module per process, so a
    workflow finds the ``Policies`` its worker registered for its task queue.
    """
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows.policies")
    )


def build_worker(
    client: Client,
    adapters: Adapters,
    *,
    task_queue: str,
    executor: ThreadPoolExecutor,
    max_concurrent_activities: int,
    interceptors: Sequence[Interceptor] = (),
    policies: Policies = DEFAULT_POLICIES,
) -> WorkerGroup:
    """The worker; every activity runs inside the telemetry interceptor (log context, metrics).

    ``policies`` are the timeouts and retry policies of the workflows it runs
    (registered for ``task_queue`` while it runs; tests pass shorter ones).
    Status callbacks run on a worker of their own (task queue ``<task_queue>-webhooks``,
    ``policies.webhook_max_in_flight`` slots and threads): a receiver that hangs never
    holds a slot an export needs. ``async with`` runs both.
    """
    webhooks = WebhookActivities(
        adapters.ledger,
        request_timeout=policies.webhook_request_timeout,
        max_in_flight=policies.webhook_max_in_flight,
        local_timeout=policies.webhook_local_timeout,
    )
    exports = ExportActivities(
        adapters.ledger, adapters.store, adapters.connectors, sent_callback=webhooks.try_with_delivery
    )
    acks = AckActivities(adapters.ledger, adapters.connectors)
    # The connection's ack listener hands answers over through this worker's client.
    listener = AckListenerActivities(
        adapters.ledger, adapters.connectors, client, acks, stale_tmp_age=policies.deliver_timeout
    )
    telemetry = TelemetryInterceptor(ExportOwners.from_ledger(adapters.ledger))
    return serve_task_queue(
        client,
        task_queue=task_queue,
        activities=[
            exports.inspect_draft,
            exports.open_attempt,
            exports.render_and_store,
            exports.deliver,
            exports.mark_failed,
            acks.poll_ack,
            listener.ensure_ack_listener,
            listener.scan_ack_path,
            webhooks.send_webhook_at_close,  # a local activity of closing runs
        ],
        webhook_activities=[webhooks.send_webhook, webhooks.give_up_webhook],
        executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        interceptors=[telemetry, *interceptors],
        policies=policies,
        on_exit=[webhooks.close],
    )


def serve_task_queue(
    client: Client,
    *,
    task_queue: str,
    activities: Sequence[Callable[..., object]],
    webhook_activities: Sequence[Callable[..., object]],
    executor: ThreadPoolExecutor,
    max_concurrent_activities: int,
    interceptors: Sequence[Interceptor] = (),
    policies: Policies = DEFAULT_POLICIES,
    on_exit: Sequence[Callable[[], object]] = (),
) -> WorkerGroup:
    """The workflows and ``activities`` on ``task_queue``, the callbacks' activities on theirs.

    ``policies`` is registered for ``task_queue`` while the group runs: what its
    workflows read (``workflows.policies.current``). Tests with stub activities
    build their worker here too.
    """
    webhook_executor = ThreadPoolExecutor(max_workers=policies.webhook_max_in_flight, thread_name_prefix="webhooks")
    webhook_worker = Worker(
        client,
        task_queue=webhook_task_queue(task_queue),
        activities=webhook_activities,
        activity_executor=webhook_executor,
        max_concurrent_activities=policies.webhook_max_in_flight,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        interceptors=interceptors,
    )
    exports_worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[ExportOrderWorkflow, AckListenerWorkflow],
        workflow_runner=build_workflow_runner(),
        activities=activities,
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        interceptors=interceptors,
    )
    return WorkerGroup(
        exports_worker,
        webhook_worker,
        contexts=[registered(task_queue, policies)],
        on_exit=[*on_exit, webhook_executor.shutdown],
    )


class WorkerGroup:
    """Workers that start and stop together (``async with``), inside ``contexts``, then run ``on_exit``."""

    def __init__(
        self,
        *workers: Worker,
        contexts: Sequence[contextlib.AbstractContextManager[object]] = (),
        on_exit: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.workers = workers
        self._contexts = contexts
        self._on_exit = on_exit
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> WorkerGroup:
        for context in self._contexts:  # entered before the workers poll, left after they stopped
            self._stack.enter_context(context)
        for worker in self.workers:
            await self._stack.enter_async_context(worker)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        for step in self._on_exit:
            step()


async def run_worker(
    settings: Settings, *, stop: asyncio.Event | None = None, policies: Policies = DEFAULT_POLICIES
) -> None:
    setup_logging(settings)
    runtime = build_runtime(settings)
    adapters = build_adapters(settings)
    adapters.store.ensure_bucket()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    client = await connect_client(settings, runtime=runtime)
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        worker = build_worker(
            client,
            adapters,
            task_queue=settings.task_queue,
            executor=executor,
            max_concurrent_activities=settings.max_concurrent_activities,
            policies=policies,
        )
        async with worker:
            bind_address = settings.metrics_bind_address()
            log.info("worker started", extra={
                "task_queue": settings.task_queue,
                "temporal": settings.temporal_address,
                "namespace": settings.temporal_namespace,
                "metrics": f"http://{bind_address}/metrics" if bind_address else "off",
            })
            await stop.wait()
            log.info("worker stopping", extra={
                "task_queue": settings.task_queue,
                "graceful_shutdown_seconds": GRACEFUL_SHUTDOWN.total_seconds(),
            })
            stopping_since = time.monotonic()
    # Reached only once every activity this worker had started has finished
    # (or was cancelled after GRACEFUL_SHUTDOWN): what a deploy waits for.
    log.info("worker stopped", extra={
        "task_queue": settings.task_queue,
        "drained_seconds": round(time.monotonic() - stopping_since, 3),
    })
    adapters.close()


def main(argv: Sequence[str] | None = None, *, policies: Policies = DEFAULT_POLICIES) -> None:
    code = 0
    try:
        asyncio.run(run_worker(load_settings(), policies=policies))
    except DropzoneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        code = 2
    except ValidationError as exc:  # settings from the environment, reported as the CLI does
        print(f"error: {invalid_settings_message(exc)}", file=sys.stderr)
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
