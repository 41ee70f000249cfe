"""What drift monitoring costs the serving path: two `servelab serve` processes, drift on and
`--no-drift`, same model and runner, measured interleaved (the machine is shared and noisy).

  (a) p50 latency at low load: one client, one request at a time, blocks of requests
      alternating between the two servers; reported as the median over block pairs of
      (on p50 - off p50). Target: <= 0.2 ms.
  (b) throughput under load: `--clients` concurrent clients for `--pass-s` seconds per pass,
      passes alternating; reported as the median of per-round ratios on / off.
      Target: >= 0.95.

Every answer's route is checked (primary). Exit 1 when a target is missed.

    .venv/bin/python benchmarks/drift_overhead.py [--model ranker] [--rounds 4]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.protocol import codec  # noqa: E402
from lab.repository import ModelRepository  # noqa: E402
from lab.serve.testing import ServerProcess  # noqa: E402
from lab.workload import Workload  # noqa: E402


def post(url: str, model: str, body: bytes, length: int) -> float:
    start = time.perf_counter_ns()
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer", data=body, headers={codec.HEADER_LENGTH: str(length)}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return (time.perf_counter_ns() - start) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ranker")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=25, help="requests per latency block")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pass-s", type=float, default=2.0)
    args = parser.parse_args()

    handle = ModelRepository(ROOT / "models").handle(args.model, None, "fp32")
    workload = Workload(handle, seed=1)
    bodies = [codec.encode_http_request(s) for s in workload.samples(200, stream="overhead")]
    base = ["--model", args.model, "--no-export", "--runner-option", "intra_op_threads=1"]
    with ServerProcess(base) as on, ServerProcess([*base, "--no-drift"]) as off:
        servers = {"on": on.http_url, "off": off.http_url}
        for url in servers.values():  # warm-up
            for body, length in bodies[:20]:
                post(url, args.model, body, length)
        deltas = []
        for r in range(args.rounds * 4):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            p50 = {}
            for name in order:
                chosen = bodies[(r * args.block) % 150 :][: args.block]
                p50[name] = statistics.median(
                    post(servers[name], args.model, b, n) for b, n in chosen
                )
            deltas.append(p50["on"] - p50["off"])
        ratios = []
        for r in range(args.rounds):
            rate = {}
            for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                deadline = time.perf_counter() + args.pass_s

                def client(i: int, url: str = servers[name], until: float = deadline) -> int:
                    done = 0
                    while time.perf_counter() < until:
                        body, length = bodies[(i * 17 + done) % len(bodies)]
                        post(url, args.model, body, length)
                        done += 1
                    return done

                start = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                    total = sum(pool.map(client, range(args.clients)))
                rate[name] = total / (time.perf_counter() - start)
            ratios.append(rate["on"] / rate["off"])
    result = {
        "model": args.model,
        "p50_added_ms_median": float(np.median(deltas)),
        "p50_added_ms_blocks": [round(d, 3) for d in deltas],
        "throughput_ratio_median": float(np.median(ratios)),
        "throughput_ratios": [round(x, 3) for x in ratios],
    }
    print(json.dumps(result, indent=1))
    ok = result["p50_added_ms_median"] <= 0.2 and result["throughput_ratio_median"] >= 0.95
    print("PASS" if ok else "FAIL: a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
