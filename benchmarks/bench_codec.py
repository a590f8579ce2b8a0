"""Payload encryption on vs off, same run: the whole pipeline with and without the codec.

"On" is the product as shipped: ``python -m worker`` and a client whose data
converter encrypts every payload (AES-256-GCM) and encodes failures. "Off" is
the same worker process with the plain pydantic converter
(``python -m benchmarks.bench_codec``, below) and a plain client. Both share
the servers, the draft size and the burst; runs alternate, and so does which
side goes first, so that the machine's noise hits both. Targets: burst
throughput ratio ≥ 0.95, single export p50 ratio ≤ 1.05.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from benchmarks.bench_e2e import Bench, E2EConfig, Workers, _pairs, temporal
from benchmarks.measure import Row, Sample
from benchmarks.stack import Stack

PLAIN_WORKER = "benchmarks.bench_codec"


async def codec_rows(stack: Stack, config: E2EConfig) -> list[Row]:
    async with temporal(stack) as env:
        encrypted = Bench(stack, env, config)
        plain = Bench(stack, env, config)
        plain.client = await Client.connect(encrypted.address, namespace=env.client.namespace,
                                            data_converter=pydantic_data_converter)
        async with Workers(stack, env.client, encrypted.address, "real", 1) as on, Workers(
            stack, env.client, encrypted.address, "plain", 1, module=PLAIN_WORKER
        ) as off:
            for bench, workers in ((plain, off), (encrypted, on)):  # warm both before timing
                await bench.burst("real", workers.task_queue, min(20, config.burst))
            ours, base = await _alternating(
                config.runs,
                lambda: encrypted.burst("real", on.task_queue, config.burst),
                lambda: plain.burst("real", off.task_queue, config.burst),
            )
            single_ours, single_base = await _pairs(
                config.single_runs,
                lambda: encrypted.one("real", on.task_queue),
                lambda: plain.one("real", off.task_queue),
            )
    burst = statistics.median(ours) / statistics.median(base)
    p50 = statistics.median(single_ours) / statistics.median(single_base)
    return [
        Row(
            name=f"Burst of {config.burst} exports, payload encryption on vs off",
            ours=Sample(ours, "exports/s"),
            baseline=Sample(base, "exports/s"),
            baseline_name="same worker, plain pydantic converter",
            ratio=burst,
            target="≥ 0.95×",
            met=burst >= 0.95,
            note="AES-256-GCM codec and encoded failures vs none; 1 worker each, bursts alternating",
            pair_ratios=[o / b for o, b in zip(ours, base, strict=True)],
        ),
        Row(
            name="One export alone, p50 start → result, payload encryption on vs off",
            ours=Sample([v * 1000 for v in single_ours], "ms"),
            baseline=Sample([v * 1000 for v in single_base], "ms"),
            baseline_name="same worker, plain pydantic converter",
            ratio=p50,
            target="≤ 1.05×",
            met=p50 <= 1.05,
            note=f"{config.single_runs} exports one after another, alternating on/off",
        ),
    ]


async def _alternating(
    runs: int, ours: Callable[[], Awaitable[float]], base: Callable[[], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    """Like ``_pairs``, but every other pair runs ours first: a burst runs slower right after
    another one (the server is still closing the last one's runs), which must not always hit the same side."""
    ours_values, base_values = [], []
    for n in range(runs):
        if n % 2:
            ours_values.append(await ours())
            base_values.append(await base())
        else:
            base_values.append(await base())
            ours_values.append(await ours())
    return ours_values, base_values


def main() -> None:
    """The benchmark's "off" worker: the real worker with the plain pydantic converter."""
    import worker

    worker.build_data_converter = lambda settings: pydantic_data_converter  # type: ignore[assignment]
    worker.main()


if __name__ == "__main__":
    main()
