"""The Open Inference Protocol (KServe v2) server with Triton's extensions.

core.py          ModelServer / ModelState: runners behind the DynamicBatcher, circuit
                 breaker (breaker.py), statistics, readiness and draining; no transport
codec.py         JSON and binary tensors (REST) and ModelInfer messages (gRPC), checked
http.py          REST on aiohttp: health, metadata, config, stats, infer
grpc_service.py  inference.GRPCInferenceService on grpc.aio (inference.proto, _proto/)
metrics.py       Prometheus text with Triton's metric names (+ GPU gauges with NVML)
app.py           all three listeners on one loop; SIGTERM drains; BackgroundServer
cli.py           `servelab serve`; config.py holds the settings and the TOML file format
client.py        helpers for RemoteTarget (lab.bench.remote_target) and RemoteRunner
faults.py        FaultyRunner, for fallback drills; testing.py runs a server process
"""
