"""Precision -> math mode, the one place every GPU runner asks what "fp32" means.

On an NVIDIA GPU "fp32" is not always fp32: TensorRT's builder enables TF32 by default
(`BuilderFlag.TF32`), ONNX Runtime's CUDA provider has `use_tf32=1` by default and cuDNN
convolutions allow TF32 in PyTorch. TF32 keeps a 10-bit mantissa (about 5e-4 relative
error), which fails the encoder's fp32 tolerances. So:

    precision  math mode   TensorRT                 ORT CUDA EP    ORT TensorRT EP          torch
    fp32       fp32        clear BuilderFlag.TF32   use_tf32=0     NVIDIA_TF32_OVERRIDE=0   allow_tf32 False (matmul, cuDNN)
    tf32       tf32        set BuilderFlag.TF32     use_tf32=1     TensorRT default         allow_tf32 True
    fp16       fp16        fp16 graph (strongly     use_tf32=0     trt_fp16_enable=1        module in fp16
                           typed), TF32 cleared

`tf32` is a precision of its own with its own tolerances in each model's config.toml; its
ONNX graph is the fp32 graph. The effective math mode goes into `runner.describe()`, and so
into the report (targets.candidate.runner.math_mode).
"""

from __future__ import annotations

from lab.errors import ConfigError

MATH_MODES = ("fp32", "tf32", "fp16", "bf16")
# The precision a model was exported at -> the math mode a GPU runner uses by default.
PRECISION_MATH = {"fp32": "fp32", "tf32": "tf32", "fp16": "fp16"}


def math_mode(precision: str, override: str = "") -> str:
    """The math mode for an exported `precision`, or `override` (a runner option) when given.

    An override may not be *less* precise than the precision's tolerances allow: fp16 math
    checked against fp32 tolerances would fail verify for a reason the user did not choose."""
    if precision not in PRECISION_MATH:
        raise ConfigError(
            f"unknown precision {precision!r} (choose from {', '.join(PRECISION_MATH)})"
        )
    if not override:
        return PRECISION_MATH[precision]
    if override not in MATH_MODES:
        raise ConfigError(f"unknown math mode {override!r}: choose from {', '.join(MATH_MODES)}")
    return override


def allows_tf32(mode: str) -> bool:
    """Whether fp32 matrix products may round through TF32 in this math mode."""
    return mode == "tf32"


def ort_cuda_options(mode: str, device_id: int) -> dict[str, str]:
    """ONNX Runtime CUDA execution provider options for a math mode (strings, as ORT wants)."""
    return {"device_id": str(device_id), "use_tf32": "1" if allows_tf32(mode) else "0"}
