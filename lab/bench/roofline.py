"""Roofline: work per sample counted from the ONNX graph, and the machine's ceilings.

Counting: every intermediate value of the graph is exposed as an output and one
representative sample is run through ONNX Runtime on the CPU (optimisations off, so the
graph is the exported one), which gives every tensor a concrete shape. Then:

- MatMul: 2*M*N*K per output matrix (batched: times the batch dims); Gemm likewise plus
  the bias; Conv: 2 * output elements * (input channels / groups) * kernel elements;
- elementwise and activation ops: one FLOP per output element (Erf, Tanh, Sigmoid, Exp,
  Pow, Sqrt... are counted as one, like most FLOP counters);
- Softmax: 5 per element; LayerNormalization: 8 per element; reductions: one per input element;
- data movement ops (Reshape, Transpose, Gather, Concat, Cast...) count 0 FLOPs.

Bytes: the weights (initialisers) are read once per batch, except tables that are only
gathered from (embeddings), whose gathered rows count instead; every activation is written
once and read once per consumer; graph inputs are read. Per sample at batch B the weights
are amortised over B samples.

Ceilings, measured at the start of the run: a large matrix product (FLOP/s) and a large
memory copy (bytes/s counted as read + write). On the CPU one method (numpy) serves every
runner; on a GPU torch with CUDA events, in the runner's math mode (fp32 with TF32 off, tf32,
fp16 or bf16 tensor cores), so a fraction of peak cannot exceed 1 for a wrong ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lab.errors import BackendUnavailable, RunnerError

ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu",
    "LeakyRelu", "Gelu", "FastGelu", "Neg", "Abs", "Reciprocal", "Clip", "Max", "Min", "Where",
    "Equal", "Less", "Greater", "Not", "And", "Or", "Sin", "Cos", "HardSigmoid", "Softplus",
    "Mod", "Floor", "Ceil", "Round", "Sign", "BiasGelu", "QuickGelu", "PRelu", "Elu", "Selu",
    "Mish", "HardSwish", "IsNaN", "IsInf", "LessOrEqual", "GreaterOrEqual",
}  # fmt: skip
REDUCTIONS = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
    "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin", "GlobalAveragePool",
    "CumSum", "LpNormalization",
}  # fmt: skip
PER_ELEMENT = {"Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "BatchNormalization": 2}
# Ops that never read their data input as a tensor (shape arithmetic).
SHAPE_ONLY = {"Shape", "Size", "ConstantOfShape", "Constant"}


def _prod(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def node_flops(
    op: str,
    in_shapes: Sequence[tuple[int, ...] | None],
    out_shapes: Sequence[tuple[int, ...]],
    attrs: Mapping[str, int] | None = None,
) -> int:
    """FLOPs of one node given concrete input and output shapes (and Gemm's transA)."""
    out = out_shapes[0] if out_shapes else ()
    if op == "MatMul" and len(in_shapes) >= 2 and in_shapes[0] is not None:
        k = in_shapes[0][-1] if len(in_shapes[0]) else 1
        return 2 * _prod(out) * int(k)
    if op == "Gemm" and in_shapes and in_shapes[0] is not None:
        a = in_shapes[0]  # (M, K), or (K, M) with transA
        k = a[0] if (attrs or {}).get("transA", 0) else a[-1]
        bias = _prod(out) if len(in_shapes) > 2 and in_shapes[2] is not None else 0
        return 2 * _prod(out) * int(k) + bias
    if op in ("Conv", "ConvTranspose") and len(in_shapes) >= 2 and in_shapes[1] is not None:
        weight = in_shapes[1]  # (C_out, C_in / groups, *kernel)
        per_output = _prod(weight[1:])
        return 2 * _prod(out) * per_output
    if op in PER_ELEMENT:
        return PER_ELEMENT[op] * _prod(out)
    if op in REDUCTIONS and in_shapes and in_shapes[0] is not None:
        return _prod(in_shapes[0])
    if op in ELEMENTWISE:
        return _prod(out)
    return 0


def count_graph(
    onnx_path: Path | str, samples: Sequence[Mapping[str, np.ndarray]]
) -> list[dict[str, Any]]:
    """FLOPs and bytes for one run of the graph on each of `samples` (each a batch)."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - both are core dependencies
        raise BackendUnavailable(f"roofline counting needs onnx and onnxruntime: {exc}") from exc

    model = onnx.load(str(onnx_path))
    graph = model.graph
    init_bytes = {
        init.name: int(onnx.numpy_helper.to_array(init).nbytes) for init in graph.initializer
    }
    existing = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.output:
            if name and name not in existing and name not in init_bytes:
                graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    # Weights read once per batch: every initialiser a node consumes as a whole. A table
    # that is only gathered from (an embedding) is read row by row: its rows are counted as
    # activations (the Gather output) instead.
    whole = set()
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in init_bytes and not (node.op_type == "Gather" and position == 0):
                whole.add(name)
    weight_bytes = sum(init_bytes[name] for name in whole)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RunnerError(f"could not load {onnx_path} to count its work: {exc}") from exc
    names = [o.name for o in session.get_outputs()]
    init_shapes = {init.name: tuple(int(d) for d in init.dims) for init in graph.initializer}
    results = []
    for sample in samples:
        try:
            values = session.run(names, dict(sample))
        except Exception as exc:
            raise RunnerError(f"could not run {onnx_path} to count its work: {exc}") from exc
        shapes: dict[str, tuple[int, ...]] = dict(init_shapes)
        nbytes: dict[str, int] = {}
        for name, value in zip(names, values):
            shapes[name] = tuple(np.shape(value))
            nbytes[name] = int(np.asarray(value).nbytes)
        for name, array in sample.items():
            shapes[name] = tuple(array.shape)
            nbytes[name] = int(array.nbytes)
        flops = 0
        by_op: dict[str, int] = {}
        activation_bytes = 0
        for node in graph.node:
            in_shapes = [shapes.get(n) if n else None for n in node.input]
            out_shapes = [shapes.get(n, ()) for n in node.output if n]
            attrs = {a.name: int(a.i) for a in node.attribute if a.name in ("transA", "transB")}
            f = node_flops(node.op_type, in_shapes, out_shapes, attrs)
            flops += f
            if f:
                by_op[node.op_type] = by_op.get(node.op_type, 0) + f
            if node.op_type in SHAPE_ONLY:
                continue
            for n in node.input:  # reads of activations (weights are counted separately)
                if n and n not in init_bytes:
                    activation_bytes += nbytes.get(n, 0)
            for n in node.output:
                if n:
                    activation_bytes += nbytes.get(n, 0)
        batch = int(next(iter(sample.values())).shape[0]) if sample else 1
        results.append(
            {
                "batch_size": batch,
                "flops": flops,
                "flops_by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
                "weight_bytes": weight_bytes,
                "activation_bytes": activation_bytes,
            }
        )
    return results


def dynamic_size(sample: Mapping[str, np.ndarray], specs: Sequence[Any]) -> int:
    """The product of the dynamic (-1) non-batch dims of the first input that has any
    (e.g. the sequence length); 1 for a model whose inputs have fixed shapes."""
    for spec in specs:
        dims = [i for i, d in enumerate(spec.shape[1:], start=1) if d == -1]
        if dims:
            shape = sample[spec.name].shape
            return int(np.prod([shape[i] for i in dims]))
    return 1


def work_model(
    onnx_path: Path | str,
    pool: Sequence[Mapping[str, np.ndarray]],
    specs: Sequence[Any],
    points: int = 6,
) -> dict[str, Any]:
    """Work per sample as a function of its dynamic size.

    A few samples whose sizes span the pool (its quantiles) are counted exactly at batch 1;
    FLOPs and activation bytes are then fitted as a polynomial of degree <= 2 in the size
    (exact for transformer encoders: linear layers grow with the length, attention with its
    square). `work_for` evaluates the fit for the samples a scenario actually ran, so its
    achieved FLOP/s counts the useful work of those samples (padding is not useful work)."""
    sizes = np.array([dynamic_size(s, specs) for s in pool])
    order = np.argsort(sizes, kind="stable")
    picks: list[int] = []
    for q in np.linspace(0, 1, points):
        index = int(order[int(round(q * (len(order) - 1)))])
        if sizes[index] not in {sizes[i] for i in picks}:
            picks.append(index)
    counts = count_graph(onnx_path, [pool[i] for i in picks])
    x = np.array([sizes[i] for i in picks], dtype=np.float64)
    degree = min(2, len(picks) - 1)
    flops_fit = np.polyfit(x, [c["flops"] for c in counts], degree) if degree else None
    bytes_fit = np.polyfit(x, [c["activation_bytes"] for c in counts], degree) if degree else None
    model: dict[str, Any] = {
        "points": [
            [int(size), int(c["flops"]), int(c["activation_bytes"])] for size, c in zip(x, counts)
        ],
        "flops_fit": None if flops_fit is None else [float(v) for v in flops_fit],
        "activation_bytes_fit": None if bytes_fit is None else [float(v) for v in bytes_fit],
        "weight_bytes": counts[0]["weight_bytes"],
        "flops_by_op_at_largest": counts[-1]["flops_by_op"],
    }
    model.update(work_for(model, pool, specs))
    model["samples_counted"] = len(counts)
    model["bytes_per_sample_at_batch_1"] = (
        model["activation_bytes_per_sample"] + model["weight_bytes"]
    )
    return model


def work_for(
    model: Mapping[str, Any], samples: Sequence[Mapping[str, np.ndarray]], specs: Sequence[Any]
) -> dict[str, float]:
    """Mean FLOPs and activation bytes per sample of `samples`, from a `work_model`."""
    if model["flops_fit"] is None:
        _, flops, activations = model["points"][0]
        return {"flops_per_sample": float(flops), "activation_bytes_per_sample": float(activations)}
    sizes = np.array([dynamic_size(s, specs) for s in samples], dtype=np.float64)
    return {
        "flops_per_sample": float(np.polyval(model["flops_fit"], sizes).mean()),
        "activation_bytes_per_sample": float(
            np.polyval(model["activation_bytes_fit"], sizes).mean()
        ),
    }


def bytes_per_sample(work: Mapping[str, Any], batch_size: float) -> float:
    """Bytes moved per sample when samples run in batches of `batch_size` (weights amortised)."""
    batch = max(1.0, float(batch_size))
    return float(work["activation_bytes_per_sample"]) + float(work["weight_bytes"]) / batch


# ----- ceilings --------------------------------------------------------------------------
def _best_rate(run: Any, work: float, budget_s: float) -> float:
    """Repeat `run()` within `budget_s` and return the best work/second seen."""
    run()  # warm-up
    best = 0.0
    deadline = time.perf_counter() + budget_s
    repeats = 0
    while repeats < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        elapsed = time.perf_counter() - start
        if elapsed > 0:
            best = max(best, work / elapsed)
        repeats += 1
        if repeats >= 50:
            break
    return best


def _ort_matmul(n: int) -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "ceiling",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.Generator(np.random.PCG64(0))
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: session.run(["c"], {"a": a, "b": b})


GPU_MATMUL_N = 8192  # large enough that an H100/H200 runs its tensor cores near peak
GPU_COPY_BYTES = 1 << 30
CEILING_DTYPES = ("fp32", "tf32", "fp16", "bf16")


def _ceilings(
    framework: str, device: str, device_name: str | None, math: str, matmul_n: int,
    copy_bytes: int, peak_flops: float, peak_bytes: float, started: float,
) -> dict[str, Any]:  # fmt: skip
    """The ceilings record (report key roofline.ceilings) of a CPU or a GPU measurement;
    `device_name` only for a GPU, `started` the perf_counter() reading before the timing."""
    record: dict[str, Any] = {"framework": framework, "device": device}
    if device_name is not None:
        record["device_name"] = device_name
    record.update(
        math=math,
        matmul_n=matmul_n,
        copy_bytes=copy_bytes,
        peak_flops_per_s=peak_flops,
        peak_bytes_per_s=peak_bytes,
        ridge_flops_per_byte=peak_flops / peak_bytes if peak_bytes > 0 else None,
        measured_s=time.perf_counter() - started,
    )
    return record


def measure_ceilings(
    framework: str = "numpy",
    budget_s: float = 1.0,
    matmul_n: int = 1024,
    copy_bytes: int = 256 << 20,
    device: str = "cpu",
    math: str = "fp32",
) -> dict[str, Any]:
    """Peak FLOP/s (a matrix product) and memory bandwidth (a copy), ~`budget_s` each.

    framework: "numpy" (the one CPU method every runner's report uses), "onnxruntime" (an ONNX
    MatMul on the CPU provider; kept for comparison) or "torch" (on `device`; on CUDA timed
    with CUDA events on GPU_MATMUL_N matrices in `math`: fp32 with TF32 off, tf32, fp16 or
    bf16, so "% of peak" compares a runner with the ceiling of the arithmetic it uses)."""
    if framework == "torch" and device.startswith("cuda"):
        return measure_gpu_ceilings(device, math, budget_s)
    flop = 2.0 * matmul_n**3
    if framework == "torch":
        import torch

        a = torch.randn(matmul_n, matmul_n)
        b = torch.randn(matmul_n, matmul_n)
        src = torch.empty(copy_bytes // 4)
        dst = torch.empty_like(src)

        def matmul() -> None:
            torch.matmul(a, b)

        def copy() -> None:
            dst.copy_(src)

    else:
        if framework == "onnxruntime":
            matmul = _ort_matmul(matmul_n)
        else:
            rng = np.random.Generator(np.random.PCG64(0))
            a_np = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)
            b_np = rng.standard_normal((matmul_n, matmul_n), dtype=np.float32)

            def matmul() -> None:
                np.matmul(a_np, b_np)

        src_np = np.ones(copy_bytes // 4, np.float32)
        dst_np = np.empty_like(src_np)

        def copy() -> None:
            np.copyto(dst_np, src_np)

    started = time.perf_counter()
    peak_flops = _best_rate(matmul, flop, budget_s)
    peak_bytes = _best_rate(copy, 2.0 * copy_bytes, budget_s)
    framework = framework if framework != "onnxruntime" else "onnxruntime (cpu)"
    return _ceilings(
        framework, device, None, "fp32", matmul_n, copy_bytes, peak_flops, peak_bytes, started
    )


def measure_gpu_ceilings(
    device: str = "cuda", math: str = "fp32", budget_s: float = 1.0,
    matmul_n: int = GPU_MATMUL_N, copy_bytes: int = GPU_COPY_BYTES,
) -> dict[str, Any]:  # fmt: skip
    """GPU ceilings timed with CUDA events on the runner's device, synchronising that device
    only. Ran on an NVIDIA H200 (benchmarks/gpu_check.py, 2026-11-30)."""
    import torch

    if math not in CEILING_DTYPES:
        raise ValueError(f"unknown math {math!r} for GPU ceilings: {', '.join(CEILING_DTYPES)}")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:  # "cuda": the current device, by its index
        dev = torch.device("cuda", torch.cuda.current_device())
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
             "bf16": torch.bfloat16}[math]  # fmt: skip
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = math == "tf32"
    try:
        a = torch.randn(matmul_n, matmul_n, device=dev, dtype=dtype)
        b = torch.randn(matmul_n, matmul_n, device=dev, dtype=dtype)
        c = torch.empty(matmul_n, matmul_n, device=dev, dtype=dtype)
        src = torch.empty(copy_bytes // 4, device=dev, dtype=torch.float32)
        dst = torch.empty_like(src)

        def timed(op: Any, work: float) -> float:
            """Best work/s over repeats within the budget (each timed by events)."""
            with torch.cuda.device(dev):
                op()  # warm-up (cuBLAS handle, workspace)
                torch.cuda.synchronize(dev)
                best, spent_s, repeats = 0.0, 0.0, 0
                while repeats < 3 or (spent_s < budget_s and repeats < 50):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    op()
                    end.record()
                    end.synchronize()
                    ms = float(start.elapsed_time(end))
                    spent_s += ms / 1000.0
                    repeats += 1
                    if ms > 0:
                        best = max(best, work / (ms / 1000.0))
            return best

        started = time.perf_counter()
        peak_flops = timed(lambda: torch.matmul(a, b, out=c), 2.0 * matmul_n**3)
        peak_bytes = timed(lambda: dst.copy_(src), 2.0 * copy_bytes)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    name = torch.cuda.get_device_name(dev)
    return _ceilings(
        "torch (cuda events)",
        device,
        name,
        math,
        matmul_n,
        copy_bytes,
        peak_flops,
        peak_bytes,
        started,
    )


def attainment(
    work: Mapping[str, Any], ceilings: Mapping[str, Any], samples_per_s: float, batch_size: float
) -> dict[str, Any]:
    """How far a measured throughput is from the roofline at its batch size."""
    flops = float(work["flops_per_sample"])
    moved = bytes_per_sample(work, batch_size)
    intensity = flops / moved if moved > 0 else 0.0
    peak_flops = float(ceilings["peak_flops_per_s"])
    peak_bytes = float(ceilings["peak_bytes_per_s"])
    attainable = min(peak_flops, intensity * peak_bytes)
    achieved = flops * samples_per_s
    return {
        "batch_size": batch_size,
        "achieved_flops_per_s": achieved,
        "achieved_bytes_per_s": moved * samples_per_s,
        "arithmetic_intensity": intensity,
        "bound": "compute" if intensity * peak_bytes >= peak_flops else "memory",
        "attainable_flops_per_s": attainable,
        "fraction_of_peak_flops": achieved / peak_flops if peak_flops > 0 else None,
        "fraction_of_roofline": achieved / attainable if attainable > 0 else None,
    }
