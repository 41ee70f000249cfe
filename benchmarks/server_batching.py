"""Issue 12's three serving ratios, measured in one run on the same model and runner:

  (a) concurrency 1: `servelab serve` (adaptive batching, the model's max_queue_delay_us) vs
      a plain server with no batching at all (aiohttp + the same runner, one request per
      call, same wire format). Target: >= 0.95x its throughput.
  (b) saturation: the server under 2 x max_batch_size concurrent clients vs in-process
      offline (full batches straight into runner.infer). Target: >= 0.95x.
  (c) good-request throughput at saturation with 5% bad requests mixed in (a value at an
      input's declared upper bound, e.g. token id = vocab, which the codec rejects before
      the batcher), vs none. Target: >= 0.9x.

Both servers run in their own processes; the sides are measured in alternating rounds and
the per-round ratios reported with their median. Exit 1 when a target is missed.

    .venv/bin/python benchmarks/server_batching.py [--model encoder] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server_overhead import LowLoad, launch, offline  # noqa: E402

from lab.export import ensure_exported  # noqa: E402
from lab.protocol import codec  # noqa: E402
from lab.repository import ModelRepository  # noqa: E402
from lab.runners import create_runner  # noqa: E402
from lab.workload import Workload  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"c1_vs_no_batching": 0.95, "saturated_vs_offline": 0.95, "good_with_5pct_bad": 0.9}


def plain_server(model: str, size: str, runner_spec: str) -> None:
    """The no-batching baseline: decode, runner.infer on this one request, encode."""
    from aiohttp import web

    handle = ModelRepository(ROOT / "models").handle(model, size)
    runner = create_runner(runner_spec).load(handle)
    spec = codec.ModelSpec(model, "1", handle.inputs, handle.outputs, 1 << 30)

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        header = codec.parse_header_length(request.headers.get(codec.HEADER_LENGTH), len(body))
        decoded = codec.decode_http(spec, body, header)
        outputs = runner.infer(decoded.inputs)
        payload, length = codec.encode_http(spec, decoded, outputs)
        headers = {codec.HEADER_LENGTH: str(length)} if length is not None else {}
        return web.Response(body=payload, headers=headers)

    app = web.Application(client_max_size=64 << 20)
    app.add_routes([web.post(f"/v2/models/{model}/infer", infer)])

    async def main() -> None:
        app_runner = web.AppRunner(app, access_log=None)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        print(f"plain http=127.0.0.1:{app_runner.addresses[-1][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def c1_paired(
    ports: dict[str, int], model: str, samples: list[dict[str, np.ndarray]], block: int
) -> tuple[dict[str, float], float]:
    """One client, one request at a time, alternating short blocks between the two servers
    (the order flips every pair) so that drifts in machine speed hit both alike. Returns each
    side's requests/s and the median over block pairs of (plain time / our time)."""
    clients = {name: LowLoad(port, model) for name, port in ports.items()}
    spent = dict.fromkeys(ports, 0.0)
    pair_ratios = []
    try:
        for n, first in enumerate(range(0, len(samples), block)):
            chunk = samples[first : first + block]
            times = {}
            for name in sorted(ports, reverse=bool(n % 2)):
                start_s = time.perf_counter()
                for sample in chunk:
                    clients[name](sample)
                times[name] = time.perf_counter() - start_s
                spent[name] += times[name]
            pair_ratios.append(times["plain"] / times["ours"])
    finally:
        for client in clients.values():
            client.close()
    return {name: len(samples) / t for name, t in spent.items()}, statistics.median(pair_ratios)


async def mixed_saturation(
    port: int, model: str, bodies: list[tuple[bytes, int, bool]], concurrency: int
) -> float:
    """Closed loop; returns good (200) answers per second. A bad body must get 400."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
    counter = iter(range(len(bodies)))
    good = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal good
        for i in counter:
            body, hlen, bad = bodies[i]
            headers = {codec.HEADER_LENGTH: str(hlen)}
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != (400 if bad else 200):
                    raise SystemExit(f"request {i} (bad={bad}) answered {response.status}")
                good += not bad

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        start_s = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return good / (time.perf_counter() - start_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="encoder")
    parser.add_argument("--size", default="small")
    parser.add_argument("--runner", default="onnxruntime")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=200, help="requests per c=1 pass")
    parser.add_argument("--batches", type=int, default=4, help="full batches per saturated pass")
    parser.add_argument("--block", type=int, default=10, help="requests per c=1 block")
    parser.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        plain_server(args.model, args.size, args.runner)
        return 0

    handle = ModelRepository(ROOT / "models").handle(args.model, args.size)
    ensure_exported(handle)
    max_batch = handle.config.max_batch_size
    workload = Workload(handle)
    samples = workload.samples(args.batches * max_batch, stream="server-batching")
    batches = [
        workload.collate(samples[i : i + max_batch]) for i in range(0, len(samples), max_batch)
    ]
    good_bodies = [(*codec.encode_http_request(s), False) for s in samples]
    mixed_bodies = []
    for i, sample in enumerate(samples):
        if i % 20 == 19:  # 5%: one value just past an input's declared upper bound
            bad = {k: v.copy() for k, v in sample.items()}
            spec = next(s for s in handle.inputs if s.limits is not None and s.limits.high)
            assert spec.limits is not None
            bad[spec.name].reshape(-1)[0] = spec.limits.high[0]
            mixed_bodies.append((*codec.encode_http_request(bad), True))
        mixed_bodies.append(good_bodies[i])
    serve = [sys.executable, "-m", "lab", "serve", "--model", args.model, "--size", args.size]
    serve += ["--runner", args.runner, "--http-port", "0", "--grpc-port", "0"]
    serve += ["--metrics-port", "0", "--max-queue-size", str(8 * max_batch)]
    plain = [sys.executable, __file__, "--plain-server", "--model", args.model]
    plain += ["--size", args.size, "--runner", args.runner]
    runner = create_runner(args.runner).load(handle)
    ours, our_port = launch(serve)
    theirs, their_port = launch(plain)
    ratios: dict[str, list[float]] = {k: [] for k in TARGETS}
    raw: dict[str, list[float]] = {}
    concurrency = 2 * max_batch
    try:
        ports = {"ours": our_port, "plain": their_port}
        c1_paired(ports, args.model, samples[:20], 10)  # warm-up
        asyncio.run(mixed_saturation(our_port, args.model, good_bodies[:max_batch], concurrency))
        for r in range(args.rounds):
            c1, c1_ratio = c1_paired(ports, args.model, samples[: args.singles], args.block)
            offline_tp = offline(runner, batches)
            passes = {"clean": good_bodies, "mixed": mixed_bodies}
            got = {}
            for name in sorted(passes, reverse=bool(r % 2)):  # the order flips every round
                got[name] = asyncio.run(
                    mixed_saturation(our_port, args.model, passes[name], concurrency)
                )
            clean, mixed = got["clean"], got["mixed"]
            ratios["c1_vs_no_batching"].append(c1_ratio)
            ratios["saturated_vs_offline"].append(clean / offline_tp)
            ratios["good_with_5pct_bad"].append(mixed / clean)
            for key, value in (
                ("c1_server_per_s", c1["ours"]),
                ("c1_no_batching_per_s", c1["plain"]),
                ("offline_samples_per_s", offline_tp),
                ("saturated_server_per_s", clean),
                ("saturated_good_with_5pct_bad_per_s", mixed),
            ):
                raw.setdefault(key, []).append(round(value, 2))
            print(
                f"round {r}: " + ", ".join(f"{k} {v[-1]}" for k, v in raw.items()), file=sys.stderr
            )
    finally:
        for proc in (ours, theirs):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        runner.close()
    result: dict[str, Any] = {
        "model": args.model,
        "size": args.size,
        "runner": args.runner,
        "cpu_count": os.cpu_count(),
        "rounds": raw,
        "ratios_per_round": {k: [round(v, 4) for v in vs] for k, vs in ratios.items()},
        "ratios": {k: round(statistics.median(vs), 4) for k, vs in ratios.items()},
        "targets": TARGETS,
    }
    result["ok"] = all(result["ratios"][k] >= t for k, t in TARGETS.items())
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
