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
config.py        BenchConfig (grouped: batching, checks, find_peak, report), each field's help
flags.py         the `servelab bench` flags, derived from the BenchConfig fields
scenarios/       one module per scenario behind the SCENARIOS registry (registry.py);
                 common.py: BenchContext (the run's fixed things) and the segment helpers
metrics.py       metric builders, the speed-up against the baseline
run.py           run_bench: targets, open_runner, roofline, scenarios, replay check, report
harness.py       run_bench and BenchConfig re-exported (their former home)
report.py        the versioned JSON report (schema: report_schema.json, schema.py)
render.py        Markdown, HTML and inline SVG plots
compare.py       `servelab compare`
cli.py           `servelab bench` and `servelab compare`
selftest.py      a synthetic model and a no-op runner (benchmarks/harness_overhead.py)
"""
