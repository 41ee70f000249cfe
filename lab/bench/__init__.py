"""The benchmark harness: targets, scenarios, validity, audits, reports.

target.py        Target seam; InProcessTarget (a runner behind the dynamic batcher)
engine.py        the load generator: query sources (copies), open and closed loops
schedule.py      Poisson arrivals, precise waits
analysis.py      percentiles, windows, stability, the VALID/INVALID rules
histogram.py     exactly mergeable HDR-style latency histogram
stats.py         bootstrap intervals
audit.py         TEST01 audit of timed outputs, TEST04 replay check
roofline.py      work counted from the ONNX graph, measured ceilings
telemetry.py     process CPU/RSS, other processes' CPU, NVML when present
environment.py   the environment fingerprint
harness.py       BenchConfig, the scenarios, run_bench
report.py        the versioned JSON report (schema: report_schema.json, schema.py)
render.py        Markdown, HTML and inline SVG plots
compare.py       `servelab compare`
cli.py           `servelab bench` and `servelab compare`
selftest.py      a synthetic model and a no-op runner (benchmarks/harness_overhead.py)
"""
