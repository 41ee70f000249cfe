"""The Open Inference Protocol (KServe v2) server with Triton's extensions.

The wire format (codec, client helpers, generated gRPC) lives in lab.protocol.

core.py          ModelServer / ModelState: runners behind the DynamicBatcher, circuit
                 breaker (breaker.py), statistics, readiness and draining; no transport
http.py          REST on aiohttp: health, metadata, config, stats, infer
grpc_service.py  inference.GRPCInferenceService on grpc.aio (lab.protocol._proto)
metrics.py       Prometheus text with Triton's metric names (+ GPU gauges with NVML)
app.py           all three listeners on one loop; SIGTERM drains; BackgroundServer
cli.py           `servelab serve`; config.py holds the settings and the TOML file format
faults.py        FaultyRunner, for fallback drills; testing.py runs a server process
"""
