"""Regenerate `lab/protocol/_proto/` from `lab/protocol/inference.proto`.

    .venv/bin/python -m lab.protocol.gen_proto

Runs grpc_tools.protoc, then makes two edits to what it writes:

* the messages are registered in a private descriptor pool instead of protobuf's default
  one, so this module and Triton's own client (whose generated code also defines the
  `inference` package) can be imported into the same process;
* the gRPC stub imports the messages from this package instead of a top-level module.

The generated files are committed; grpcio-tools is only needed to regenerate them.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "inference.proto"
OUT = HERE / "_proto"

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# Private pool: Triton's client defines the same `inference` package in the default one.\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)


_STUB = "from typing import Any\n\ndef __getattr__(name: str) -> Any: ...\n"


def _patch_messages(text: str) -> str:
    if _DEFAULT_POOL not in text:
        raise SystemExit("gen_proto: protoc output changed shape (no default pool call found)")
    return text.replace("DESCRIPTOR = " + _DEFAULT_POOL, _PRIVATE_POOL, 1)


def _patch_stub(text: str) -> str:
    patched, count = re.subn(
        r"^import inference_pb2 as inference__pb2$",
        "from lab.protocol._proto import inference_pb2 as inference__pb2",
        text,
        flags=re.M,
    )
    if count != 1:
        raise SystemExit("gen_proto: protoc output changed shape (no message import found)")
    return patched


def generate(out: Path = OUT) -> list[Path]:
    from grpc_tools import protoc  # only needed here

    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO.parent}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"gen_proto: protoc failed with exit code {code}")
        messages = _patch_messages((Path(tmp) / "inference_pb2.py").read_text())
        stub = _patch_stub((Path(tmp) / "inference_pb2_grpc.py").read_text())
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "__init__.py": '"""Generated from lab/protocol/inference.proto by lab.protocol.gen_proto."""\n',
        "inference_pb2.py": messages,
        "inference_pb2_grpc.py": stub,
        # Generated protobuf classes are dynamic: to mypy every name in them is Any.
        "inference_pb2.pyi": _STUB,
        "inference_pb2_grpc.pyi": _STUB,
    }
    for name, text in written.items():
        (out / name).write_text(text)
    return [out / name for name in written]


def main() -> int:
    for path in generate():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
