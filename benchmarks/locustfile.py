"""Load-test a ServeLab (or any KServe v2 / Triton) server with locust.

Each simulated user sends realistic workload samples (lab.workload, the same generator the
harness uses) as binary infer requests, back to back, and checks every answer against the
PyTorch fp32 reference with the model's checker: a 200 with wrong outputs is a failure.

Headless, one process (prints the summary, exits 1 if any request failed):

    servelab serve --model encoder &                      # http on 127.0.0.1:8000
    locust -f benchmarks/locustfile.py --headless -u 32 -r 8 -t 30s \
        --host http://127.0.0.1:8000 --only-summary --exit-code-on-error 1

Distributed, a master and N workers (one per core you can spare; same file everywhere).
The master aggregates the workers' stats by merging their response-time histograms:

    locust -f benchmarks/locustfile.py --master --headless --expect-workers 4 \
        -u 256 -r 32 -t 5m --host http://SERVER:8000 --only-summary --csv reports/locust
    locust -f benchmarks/locustfile.py --worker --master-host MASTER_HOST      # x4

Settings (environment variables): SERVELAB_MODEL (default encoder), SERVELAB_SIZE (default
the model's default size), SERVELAB_PRECISION (fp32), SERVELAB_SAMPLES (distinct samples per
worker, default 64), SERVELAB_SEED (workload seed, default the model's public seed),
SERVELAB_MODEL_REPOSITORY (default ./models), SERVELAB_AUTH_TOKEN (bearer token, if the
server wants one). The served model must be the same size and precision as the one checked.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import gevent
import numpy as np
from locust import FastHttpUser, constant, events, task
from locust.runners import MasterRunner

from lab.check import Checker
from lab.errors import ServeError
from lab.protocol import codec
from lab.repository import ModelRepository
from lab.workload import Workload


@dataclass
class Pool:
    model: str
    bodies: list[tuple[bytes, int]]
    reference: list[dict[str, np.ndarray]]
    checker: Checker
    headers: dict[str, str]


POOL: Pool | None = None


def build_pool() -> Pool:
    env = os.environ
    handle = ModelRepository(env.get("SERVELAB_MODEL_REPOSITORY")).handle(
        env.get("SERVELAB_MODEL", "encoder"),
        env.get("SERVELAB_SIZE") or None,
        env.get("SERVELAB_PRECISION", "fp32"),
    )
    seed = env.get("SERVELAB_SEED")
    workload = Workload(handle, int(seed) if seed else None)
    samples = workload.samples(int(env.get("SERVELAB_SAMPLES", "64")), stream="locust")
    names = [s.name for s in handle.outputs]
    headers = {"Content-Type": "application/octet-stream"}
    if env.get("SERVELAB_AUTH_TOKEN"):
        headers["Authorization"] = f"Bearer {env['SERVELAB_AUTH_TOKEN']}"
    return Pool(
        model=handle.name,
        bodies=[codec.encode_http_request(s, names) for s in samples],
        reference=workload.reference(samples),
        checker=workload.checker(handle.precision),
        headers=headers,
    )


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    global POOL
    if not isinstance(environment.runner, MasterRunner):  # the master sends nothing
        POOL = build_pool()
        # Building the pool blocks the event loop for seconds (references through PyTorch)
        # and gevent's loop keeps the time of its last iteration: without this refresh the
        # `-t` timer, started right after init, counts the build and can expire at once.
        gevent.get_hub().loop.update_now()


class InferUser(FastHttpUser):
    """Closed loop: each user sends its next request as soon as the last is answered."""

    wait_time = constant(0)

    @task
    def infer(self) -> None:
        pool = POOL
        assert pool is not None, "the sample pool is built at init"
        i = random.randrange(len(pool.bodies))
        body, header_length = pool.bodies[i]
        path = f"/v2/models/{pool.model}/infer"
        headers = {**pool.headers, codec.HEADER_LENGTH: str(header_length)}
        with self.client.post(
            path, data=body, headers=headers, name=path, catch_response=True
        ) as response:
            payload = response.content or b""
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {codec.error_message(payload)}")
                return
            try:
                outputs, _ = codec.decode_http_response(
                    payload, response.headers.get(codec.HEADER_LENGTH)
                )
            except ServeError as exc:  # a malformed answer is a failed request, not a crash
                response.failure(f"malformed response: {exc}")
                return
            result = pool.checker.check([outputs], [pool.reference[i]])
            if result.passed:
                response.success()
            else:  # one stable message per failing output, so locust groups them
                failing = sorted({f.split(":", 1)[0] for f in result.failures})
                response.failure(f"wrong outputs ({', '.join(failing)} out of tolerance)")
