"""Dockerfile, Dockerfile.gpu and .dockerignore: linted, and held to the code and to k8s/.

No container engine runs here, so the images are never built: hadolint and checkov lint the
files, and these tests check what the manifests and the code rely on (entrypoint commands
that parse, the user id, the ports, the paths of the model repository and the locustfile,
the health check path, a build context that holds every file the build copies).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_tools import (
    DOCKERFILES,
    K8S,
    ROOT,
    checkov_results,
    containers,
    pod_spec,
    render,
    run_tool,
)

from lab.cli import build_parser
from lab.serve.config import ServeConfig, build_config, load_file, tomllib


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
    return instructions


def final_stage(path: Path) -> list[Instruction]:
    instructions = parse_dockerfile(path)
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), value
    return parsed


def servelab_runs(value: str) -> list[list[str]]:
    """The `servelab ...` commands of a RUN line (split at && )."""
    return [
        shlex.split(part)[1:] for part in value.split("&&") if shlex.split(part)[:1] == ["servelab"]
    ]


def base_config() -> ServeConfig:
    return build_config(load_file(K8S / "base" / "serve.toml"), {})


# ----- linters -----------------------------------------------------------------------------
def test_hadolint_passes_on_both_dockerfiles() -> None:
    result = run_tool("hadolint", *(str(ROOT / d) for d in DOCKERFILES), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp\n")
    result = run_tool("hadolint", str(bad), check=False)
    assert result.returncode != 0
    assert {"DL3006", "DL3008", "DL3003"} <= set(re.findall(r"DL\d{4}", result.stdout))


def test_checkov_passes_on_both_dockerfiles() -> None:
    results = checkov_results()["results"]
    scanned = {r["file_path"].lstrip("/") for r in results["passed_checks"]}
    for name in DOCKERFILES:
        assert any(path.endswith(name) for path in scanned), f"checkov did not scan {name}"
    failed = [r for r in results["failed_checks"] if r["check_type"] == "dockerfile"]
    assert not failed, [(r["check_id"], r["file_path"]) for r in failed]


# ----- entrypoints, user, ports, paths ------------------------------------------------------
@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_and_commands_parse_with_the_cli(name: str) -> None:
    final = final_stage(ROOT / name)
    entrypoint = [exec_form(i.value) for i in final if i.keyword == "ENTRYPOINT"]
    cmd = [exec_form(i.value) for i in final if i.keyword == "CMD"]
    assert entrypoint == [["servelab"]]
    assert len(cmd) == 1
    parser = build_parser()
    args = parser.parse_args(cmd[0])
    assert args.command == "serve" and args.host == "0.0.0.0" and args.export is False
    runs = [c for i in final if i.keyword == "RUN" for c in servelab_runs(i.value)]
    assert runs, "the image exports its models at build time"
    exported = set()
    for run in runs:
        parsed = parser.parse_args(run)
        assert parsed.command == "export"
        exported.add(parsed.model)
    served = {m for o in ("cpu", "gpu") for c in render(o).of_kind("ConfigMap") for m in _models(c)}
    assert served <= exported, f"the manifests serve {served}, the image exports {exported}"


def _models(config_map: dict[str, Any]) -> set[str]:
    data = config_map.get("data", {})
    return {m for text in data.values() for m in tomllib.loads(text).get("model", [])}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_user_ports_and_paths_match_the_manifests(name: str) -> None:
    final = final_stage(ROOT / name)
    user = [i.value for i in final if i.keyword == "USER"]
    assert len(user) == 1
    uid, gid = (int(x) for x in user[0].split(":"))
    workloads = [w for o in ("cpu", "gpu", "multi-gpu", "loadtest") for w in render(o).workloads()]
    for workload in workloads:
        context = pod_spec(workload)["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    config = base_config()
    exposed = {int(p) for i in final if i.keyword == "EXPOSE" for p in i.value.split()}
    assert exposed == {config.http_port, config.grpc_port, config.metrics_port}
    workdir = [i.value for i in final if i.keyword == "WORKDIR"][-1]
    copies = {}
    for i in final:
        if i.keyword == "COPY" and not i.value.startswith("--from"):
            *sources, target = i.value.split()
            for source in sources:
                into = Path(workdir) / target
                if target.endswith("/") and len(sources) > 1:
                    into = into / source
                copies[source.rstrip("/")] = str(into).rstrip("/")
    assert copies["models"] == config.model_repository == "/app/models"
    locust = render("loadtest").get("Job", "servelab-locust-master")
    args = containers(locust)[0][1]["args"]
    assert copies["benchmarks/locustfile.py"] == args[args.index("--locustfile") + 1]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_healthcheck_hits_the_liveness_probe(name: str) -> None:
    final = final_stage(ROOT / name)
    check = [i.value for i in final if i.keyword == "HEALTHCHECK"]
    assert len(check) == 1
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\S+?)'", check[0])
    assert url is not None
    deployment = render("cpu").get("Deployment", "servelab")
    server = next(c for k, c in containers(deployment) if k == "main")
    probe = server["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert (int(url[1]), url[2]) == (ports[probe["port"]], probe["path"])


def test_cpu_image_takes_torch_at_the_pinned_version() -> None:
    text = (ROOT / "Dockerfile").read_text()
    pattern = re.search(r"grep '(\^torch==)'", text)
    assert pattern is not None, "the Dockerfile reads the torch pin from constraints/cpu.txt"
    pins = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    assert len([p for p in pins if re.match(pattern[1], p)]) == 1
    assert "--constraint constraints/cpu.txt" in text


# ----- the build context ----------------------------------------------------------------------
def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out += pattern[i : end + 1]
                i = end + 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(regex(pattern).fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_holds_every_copied_file() -> None:
    patterns = _dockerignore()
    for name in DOCKERFILES:
        for i in parse_dockerfile(ROOT / name):
            if i.keyword != "COPY" or i.value.startswith("--from"):
                continue
            *sources, _target = i.value.split()
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{name}: COPY {source}: no such file"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                kept = [
                    f
                    for f in files
                    if not dockerignore_excludes(str(f.relative_to(ROOT)), patterns)
                ]
                assert kept, f"{name}: .dockerignore leaves nothing of {source}"
                if path.is_file():
                    assert kept == files, f"{name}: .dockerignore drops {source}"
    for inside in ("lab/serve/http.py", "models/encoder/model.py", "models/encoder/config.toml"):
        assert not dockerignore_excludes(inside, patterns), inside
    for outside in (
        "models/encoder/1/small-weights.safetensors",
        "tests/test_k8s.py",
        ".venv/bin/python",
        ".git/HEAD",
        "reports/latest.json",
        "lab/__pycache__/cli.cpython-311.pyc",
        "k8s/base/deployment.yaml",
    ):
        assert dockerignore_excludes(outside, patterns), outside


def test_dockerignore_matcher_follows_the_last_match() -> None:
    assert dockerignore_excludes("a/b.txt", ["**"])
    assert not dockerignore_excludes("a/b.txt", ["**", "!a/"])
    assert dockerignore_excludes("a/1/b.txt", ["**", "!a/", "a/[0-9]*"])
    assert not dockerignore_excludes("a/x/b.txt", ["**", "!a/", "a/[0-9]*"])
