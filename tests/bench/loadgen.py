"""Load generator (separate process): closed loop, `inflight` concurrent callers over
`channels` channels; or open loop with `--rate`, calls started at a fixed rate whatever
the answers (a fixed offered load, for CPU per request below saturation). A warm-up,
then a measured window. Prints MEASURE_START / MEASURE_END lines (the harness samples
server CPU time on them) and a JSON result."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import grpc


def credentials(certs: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "client-key.pem").read_bytes(),
        certificate_chain=(certs / "client.pem").read_bytes(),
    )


async def run(args: argparse.Namespace) -> dict[str, object]:
    metadata = tuple(tuple(h.split(": ", 1)) for h in args.header)
    request = bytes.fromhex(args.request_hex)
    channels = [
        grpc.aio.secure_channel(
            args.target, credentials(args.certs), options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(args.channels)
    ]
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        ch.unary_unary(args.method) for ch in channels
    ]
    for call in calls:  # connect (handshake) before the clock starts
        await call(request, metadata=metadata, timeout=10)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    measuring = False
    stop_at = time.monotonic() + args.warmup + args.duration

    async def caller(i: int) -> None:
        call = calls[i % len(calls)]
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await call(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - t0)

    async def clock() -> float:
        nonlocal measuring
        await asyncio.sleep(args.warmup)
        measuring = True
        print("MEASURE_START", flush=True)
        started = time.perf_counter()
        await asyncio.sleep(args.duration)
        measuring = False
        print("MEASURE_END", flush=True)
        return time.perf_counter() - started

    async def one(call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]) -> None:
        t0 = time.perf_counter()
        counted = measuring
        try:
            await call(request, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            errors[error.code().name] = errors.get(error.code().name, 0) + 1
            return
        if counted:
            latencies.append(time.perf_counter() - t0)

    async def ticker() -> None:
        """Start calls on schedule (`rate` a second), not when earlier ones answered."""
        started, launched = time.monotonic(), 0
        pending: set[asyncio.Task[None]] = set()
        while (now := time.monotonic()) < stop_at:
            due = int((now - started) * args.rate)
            for _ in range(due - launched):
                task = asyncio.create_task(one(calls[launched % len(calls)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                launched += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*pending)

    if args.rate:
        tasks = [asyncio.create_task(ticker())]
    else:
        tasks = [asyncio.create_task(caller(i)) for i in range(args.inflight)]
    window = await clock()
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close(None)
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6 if latencies else 0.0
        )

    return {
        "requests": len(latencies),
        "rps": len(latencies) / window,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": latencies[-1] * 1e6 if latencies else 0.0,
        "mean_us": statistics.fmean(latencies) * 1e6 if latencies else 0.0,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--request-hex", default="")
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop: calls started per second"
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    print("RESULT " + json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
