"""k8s/: every overlay renders, validates strictly, passes checkov, and agrees with the code.

No cluster runs here. Instead the manifests are held to the code they deploy: probes hit a
real server started from the overlay's own ConfigMap, every container's command parses with
the program's own argument parser, the ConfigMap's TOML loads with the server's loader, and
the autoscaler's metrics exist on the server's /metrics page.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_tools import (
    K8S,
    K8S_VERSIONS,
    OVERLAYS,
    ROOT,
    Rendered,
    checkov_results,
    containers,
    expand_env,
    pod_spec,
    render,
    render_dir,
    run_tool,
)

from lab.cli import build_parser
from lab.dist.cli import DIST_RUNNER_SPEC, launch_spec, serve_argv
from lab.dist.launch import torchrun_command
from lab.repository import ModelHandle
from lab.runners import create_runner, parse_options, resolve_runner
from lab.serve.cli import config_from_args
from lab.serve.config import ServeConfig
from lab.serve.testing import ServerProcess

PORT_FIELDS = {"http": "http_port", "grpc": "grpc_port", "metrics": "metrics_port"}
# The Job controller labels each pod of an Indexed Job with its index from Kubernetes 1.28
# (PodIndexLabel, GA in 1.32); every version these manifests support has it.
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
assert tuple(int(x) for x in K8S_VERSIONS[0].split(".")[:2]) >= (1, 28)


def _pod_labels(workload: dict[str, Any]) -> list[dict[str, str]]:
    """The label sets the workload's pods carry: one per index for an Indexed Job."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    if workload["kind"] == "Job" and workload["spec"].get("completionMode") == "Indexed":
        return [{**labels, INDEX_LABEL: str(i)} for i in range(workload["spec"]["completions"])]
    return [labels]


# ----- rendering and validation ---------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders(overlay: str) -> None:
    rendered = render(overlay)
    assert rendered.workloads(), f"{overlay} renders no workload"
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "servelab", (overlay, obj["kind"])


def _servicemonitor_variant(tmp_path: Path) -> Rendered:
    """The cpu overlay plus the optional ServiceMonitor component, as a user would add it."""
    overlay = Path(os.path.relpath(K8S / "overlays" / "cpu", tmp_path))
    component = Path(os.path.relpath(K8S / "components" / "servicemonitor", tmp_path))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: ['{overlay}']\ncomponents: ['{component}']\n"
    )
    return render_dir(tmp_path, "cpu+servicemonitor")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_strictly(version: str, tmp_path: Path) -> None:
    files = []
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(render(overlay).text)
        files.append(str(path))
    result = run_tool(
        "kubernetes-validate", "--strict", "--quiet", "-k", version, *files, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # --quiet prints only warnings and failures: a kind without a schema is a warning, and
    # every kind in the overlays is a built-in one, so nothing may be printed at all.
    assert not (result.stdout + result.stderr).strip()


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    deployment = render("cpu").get("Deployment", "servelab")
    deployment = json.loads(json.dumps(deployment))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    result = run_tool(
        "kubernetes-validate", "--strict", "-k", K8S_VERSIONS[0], str(path), check=False
    )
    assert result.returncode != 0
    assert "livenessprobe" in result.stdout + result.stderr


def test_servicemonitor_component_selects_the_metrics_port(tmp_path: Path) -> None:
    rendered = _servicemonitor_variant(tmp_path)
    monitor = rendered.get("ServiceMonitor", "servelab")
    assert monitor["metadata"]["namespace"] == "servelab"
    service = rendered.get("Service", "servelab")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoint = monitor["spec"]["endpoints"][0]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"


def test_checkov_passes_and_every_skip_is_justified() -> None:
    results = checkov_results()["results"]
    assert not results["parsing_errors"], results["parsing_errors"]
    failed = [r for r in results["failed_checks"] if not r["file_path"].endswith("control.yaml")]
    assert not failed, "\n".join(
        f"{r['check_id']} {r['check_name']}: {r['resource']} ({r['file_path']})" for r in failed
    )
    # the control pod proves that the scanner ran and looks at containers
    control = {
        r["check_id"] for r in results["failed_checks"] if r["file_path"].endswith("control.yaml")
    }
    assert {"CKV_K8S_16", "CKV_K8S_14"} <= control, control
    assert len(results["passed_checks"]) > 100
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 8, (
            f"{skipped['check_id']} on {skipped['resource']}: {reason!r}"
        )


def test_every_skip_annotation_silences_a_check_that_applies() -> None:
    """A checkov.io/skip annotation for a check that does not apply to its object is noise
    that hides nothing: each one must show up as a skipped result."""
    skipped = {
        (r["check_id"], r["resource"].split(".")[-1])
        for r in checkov_results()["results"]["skipped_checks"]
    }
    for overlay in OVERLAYS:
        for obj in render(overlay).objects:
            for key, value in obj["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check_id = value.split("=", 1)[0]
                    assert (check_id, obj["metadata"]["name"]) in skipped, (overlay, key, value)


# ----- references between objects ----------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_object_is_in_the_overlay(overlay: str) -> None:
    rendered = render(overlay)
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, volume
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, volume
        mounted = {v["name"] for v in spec.get("volumes", [])}
        for _, container in containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounted, (workload["metadata"]["name"], mount)
    for hpa in rendered.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_named_container_ports(overlay: str) -> None:
    rendered = render(overlay)
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        pods = [
            w
            for w in rendered.workloads()
            if any(selector.items() <= labels.items() for labels in _pod_labels(w))
        ]
        assert pods, f"{overlay}: Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            for workload in pods:
                declared = {
                    p.get("name"): p["containerPort"]
                    for _, c in containers(workload)
                    for p in c.get("ports", [])
                }
                target = port["targetPort"]
                assert target in declared or target in declared.values(), (service, port)


# ----- the security and resource rules of the issue -------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down_and_sized(overlay: str) -> None:
    for workload in render(overlay).workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for _, c in containers(workload):
            where = f"{overlay}/{workload['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][side]), (where, side)


def _serve_args(container: dict[str, Any], node_rank: int = 0) -> list[str] | None:
    """The `servelab serve` command line the container runs on the pod of node rank
    `node_rank` (after $(VAR) expansion), or None where it serves nothing: a plain
    `servelab serve`, or the one `servelab dist serve` builds on node rank 0 (lab.dist's own
    serve_argv); on the other node ranks `servelab dist serve` only runs ranks."""
    if container.get("command") != ["servelab"]:
        return None
    args = expand_env(container["args"], container, {"NODE_RANK": str(node_rank)})
    if args[:1] == ["serve"]:
        return args
    if args[:2] == ["dist", "serve"]:
        parsed = _parse(container["command"], args)
        return serve_argv(parsed) if parsed.node_rank == 0 else None
    return None


def _server_containers(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in rendered.workloads():
        for kind, container in containers(workload):
            if kind == "main" and _serve_args(container) is not None:
                yield workload, container


# Each probe of a server container: (probe, path it must ask for).
PROBE_PATHS = {
    "startupProbe": "/v2/health/ready",
    "readinessProbe": "/v2/health/ready",
    "livenessProbe": "/v2/health/live",
}


def _probe_target(container: dict[str, Any], probe: dict[str, Any]) -> tuple[str, int]:
    """(path, port number) that a probe asks: an httpGet, or the exec form the multi-node
    Job uses (python3 -c SCRIPT PATH PORT, asking on node rank 0 only)."""
    if "httpGet" in probe:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        port = probe["httpGet"]["port"]
        return probe["httpGet"]["path"], ports.get(port, port)
    command = probe["exec"]["command"]
    assert command[:2] == ["python3", "-c"] and len(command) == 5, command
    return command[3], int(command[4])


def _scrape_annotations(rendered: Rendered, workload: dict[str, Any]) -> dict[str, str]:
    """The prometheus.io annotations that get the serving pod scraped: the pod template's,
    or, where not every pod of the template serves (an Indexed Job of which node rank 0
    serves), those of the Service that selects rank 0 alone; then the template carries none,
    so that the pods without a metrics listener are no failed targets."""
    template = workload["spec"]["template"]["metadata"].get("annotations", {})
    serving = [i for i, _ in enumerate(_pod_labels(workload)) if _serves(workload, i)]
    if len(serving) == len(_pod_labels(workload)):
        return template
    assert not any(k.startswith("prometheus.io/") for k in template), workload["metadata"]
    assert serving == [0]
    rank0 = _pod_labels(workload)[0]
    found = []
    for service in rendered.of_kind("Service"):
        selector = service["spec"]["selector"]
        annotations = service["metadata"].get("annotations", {})
        if selector.items() <= rank0.items() and annotations.get("prometheus.io/scrape"):
            # no other pod, of this workload or another, is scraped with rank 0
            for other in rendered.workloads():
                for i, labels in enumerate(_pod_labels(other)):
                    if selector.items() <= labels.items():
                        assert other is workload and i == 0, (service["metadata"], i)
            found.append(service)
    assert len(found) == 1, f"{workload['metadata']['name']}: no Service scrapes rank 0"
    service = found[0]
    metrics = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    port = int(service["metadata"]["annotations"]["prometheus.io/port"])
    assert metrics[port] == "metrics"
    return dict(service["metadata"]["annotations"])


def _serves(workload: dict[str, Any], index: int) -> bool:
    main = next(c for k, c in containers(workload) if k == "main")
    return _serve_args(main, index) is not None


@pytest.mark.parametrize("overlay", ("cpu", "gpu", "multi-gpu"))
def test_server_pods_have_probes_scrape_annotations_and_a_long_enough_grace(
    overlay: str, tmp_path: Path
) -> None:
    rendered = render(overlay)
    servers = list(_server_containers(rendered))
    assert servers
    for workload, container in servers:
        config = _config_of(rendered, workload, container, tmp_path)
        for name, path in PROBE_PATHS.items():
            assert _probe_target(container, container[name]) == (path, config.http_port)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for name, field in PORT_FIELDS.items():
            assert ports[name] == getattr(config, field), (overlay, name)
        annotations = _scrape_annotations(rendered, workload)
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == config.metrics_port
        assert annotations["prometheus.io/path"] == "/metrics"
        # Kubernetes counts the grace period from the start of preStop: it must cover the
        # preStop sleep and then the server's whole drain.
        pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop_s >= 1
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        assert grace >= pre_stop_s + config.grace_s, (overlay, grace, pre_stop_s, config.grace_s)
        assert config.host == "0.0.0.0"  # reachable from outside the pod


def _run_exec_probe(probe: dict[str, Any], node_rank: int, port: int) -> int:
    """Run an exec probe's python3 script here (this interpreter), on another port."""
    command = probe["exec"]["command"]
    env = {**os.environ, "NODE_RANK": str(node_rank)}
    result = subprocess.run(
        [sys.executable, *command[1:4], str(port)], env=env, capture_output=True, timeout=60
    )
    return result.returncode


def _exec_probes() -> list[dict[str, Any]]:
    job = render("multi-gpu").get("Job", "servelab-dist")
    main = next(c for k, c in containers(job) if k == "main")
    return [main[name] for name in PROBE_PATHS]


def test_exec_probes_pass_on_ranks_that_serve_nothing_and_ask_rank_0s_server() -> None:
    with socket.socket() as held:  # bound, not listening: a refused connection
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        for probe in _exec_probes():
            assert _run_exec_probe(probe, 0, port) != 0  # rank 0 without a server fails
            assert _run_exec_probe(probe, 1, port) == 0  # a rank that serves nothing passes
    job = render("multi-gpu").get("Job", "servelab-dist")
    assert not _serves(job, 1) and _serves(job, 0)


# ----- commands parse with their programs' own parsers -------------------------------------
def _no_abbreviations(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subcommands' parsers, refusing shortened flags: a manifest spells
    each flag in full, so that a flag added later cannot make it ambiguous."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)
    return parser


def _parse(command: list[str], args: list[str]) -> Any:
    """Parse a container's command line with the program's own parser (fails the test on
    a usage error, which argparse reports by exiting)."""
    program = command[0]
    try:
        if program == "servelab":
            assert len(command) == 1, command
            return _no_abbreviations(build_parser()).parse_args(args)
        if program == "locust":
            return _parse_locust(tuple(args))
        if program == "torchrun":
            from torch.distributed.run import get_args_parser

            return _no_abbreviations(get_args_parser()).parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{program} rejects {args}: exit {exc.code}", pytrace=False)
    pytest.fail(f"unexpected program {program!r}: add its parser to this test", pytrace=False)


# Importing locust monkey-patches the standard library (gevent) for the whole process, so
# its parser runs in a child process.
_LOCUST_PARSE = """
import json, sys
from locust.argument_parser import get_parser
try:
    parser = get_parser()
    parser.allow_abbrev = False
    parsed = parser.parse_args(json.loads(sys.argv[1]))
except SystemExit as exc:
    print(json.dumps({"exit": exc.code}))
else:
    print(json.dumps({"parsed": vars(parsed)}, default=str))
"""


@functools.cache
def _parse_locust(args: tuple[str, ...]) -> argparse.Namespace:
    result = subprocess.run(
        [sys.executable, "-c", _LOCUST_PARSE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if "exit" in answer:
        raise SystemExit(answer["exit"])
    return argparse.Namespace(**answer["parsed"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_command_parses(overlay: str) -> None:
    for workload in render(overlay).workloads():
        for _, container in containers(workload):
            args = expand_env(container["args"], container)
            assert _parse(container["command"], args) is not None
            # `servelab dist serve ... -- SERVE_ARGS`: the server's own line, as lab.dist
            # builds it on node rank 0, parses too (argparse takes SERVE_ARGS unchecked)
            served = _serve_args(container)
            if served is not None and served != args:
                assert _parse(container["command"], served).command == "serve"


def test_a_misspelt_flag_fails_the_parse_check() -> None:
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        _parse(["servelab"], ["serve", "--confg", "/etc/servelab/serve.toml"])
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        _parse(["locust"], ["--locustfile", "x.py", "--workers-count", "4"])
    with pytest.raises(pytest.fail.Exception, match="rejects"):  # a shortened flag
        _parse(["servelab"], ["bench", "--no-progres"])
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        _parse(["locust"], ["--locustfile", "x.py", "--worker", "--master-prt", "5557"])
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        _parse(["torchrun"], ["--nproc-per-nod", "4", "-m", "lab.dist"])
    dist = ["dist", "serve", "--mode", "replicas", "--model", "encoder", "--nproc", "4"]
    served = _serve_args({"command": ["servelab"], "args": [*dist, "--", "--confg", "x"]})
    assert served is not None
    with pytest.raises(pytest.fail.Exception, match="rejects"):  # after `--`: serve's flags
        _parse(["servelab"], served)
    assert _parse(["torchrun"], ["--nproc-per-node", "4", "-m", "lab.dist", "--x"]).module


# ----- the ConfigMap's TOML is the server's config --------------------------------------------
def _config_path(workload: dict[str, Any], container: dict[str, Any]) -> tuple[str, str]:
    """(ConfigMap name, key) behind the container's --config FILE."""
    args = _serve_args(container)
    assert args is not None
    path = args[args.index("--config") + 1]
    folder, key = path.rsplit("/", 1)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts[folder]
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    return volumes[volume_name]["configMap"]["name"], key


def _config_of(
    rendered: Rendered, workload: dict[str, Any], container: dict[str, Any], tmp_path: Path
) -> ServeConfig:
    """The ServeConfig that the container's command line would run with."""
    name, key = _config_path(workload, container)
    config_map = rendered.get("ConfigMap", name)
    path = tmp_path / f"{name}-{key}"
    path.write_text(config_map["data"][key])
    args = _serve_args(container)
    assert args is not None
    args[args.index("--config") + 1] = str(path)
    return config_from_args(build_parser().parse_args(args))


@pytest.mark.parametrize("overlay", ("cpu", "gpu", "multi-gpu"))
def test_configmap_toml_loads_with_the_server_loader(overlay: str, tmp_path: Path) -> None:
    rendered = render(overlay)
    for workload, container in _server_containers(rendered):
        config = _config_of(rendered, workload, container, tmp_path)
        assert config.export is False  # read-only root file system: exports are in the image
        assert config.model_repository == "/app/models"
        # the runners accept the options (constructing a runner imports nothing heavy)
        primary = create_runner(config.runner, config.runner_options)
        assert primary.name == resolve_runner(config.runner).name  # a plugin: its class's
        if config.fallback_runner != "none":
            create_runner(config.fallback_runner, config.fallback_options)


def test_a_wrong_key_in_the_configmap_is_caught(tmp_path: Path) -> None:
    rendered = render("cpu")
    workload, container = next(_server_containers(rendered))
    name, key = _config_path(workload, container)
    bad = json.loads(json.dumps(rendered.get("ConfigMap", name)))
    bad["data"][key] = bad["data"][key].replace("grace-s", "grace-seconds")
    objects = tuple(bad if o["kind"] == "ConfigMap" else o for o in rendered.objects)
    from lab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'grace-seconds'"):
        _config_of(Rendered("bad", "", objects), workload, container, tmp_path)


def test_cpu_overlay_threads_match_the_cpu_limit(tmp_path: Path) -> None:
    rendered = render("cpu")
    workload, container = next(_server_containers(rendered))
    config = _config_of(rendered, workload, container, tmp_path)
    cores = int(container["resources"]["limits"]["cpu"])
    assert config.runner == "onnxruntime"
    assert config.runner_options["intra_op_threads"] == cores


def test_engine_init_container_builds_the_engine_the_server_loads(tmp_path: Path) -> None:
    """The engine cache key hashes the runner options: the init container must pass exactly
    the server's, and write where the server reads. (The multi-gpu overlay runs no TensorRT,
    hence no init container: test_multi_gpu_launches_through_lab_dist checks that.)"""
    rendered = render("gpu")
    workload = rendered.get("Deployment", "servelab")
    container = next(c for k, c in containers(workload) if k == "main")
    init = next(c for k, c in containers(workload) if k == "init")
    config = _config_of(rendered, workload, container, tmp_path)
    args = _parse(init["command"], init["args"])
    assert args.command == "verify"
    assert args.runner == config.runner == "tensorrt"
    assert [args.model] == list(config.model)
    assert args.model_repository == config.model_repository
    init_runner = create_runner(args.runner, parse_options(args.runner_option))
    server_runner = create_runner(config.runner, config.runner_options)
    assert init_runner.options == server_runner.options
    cache = str(server_runner.options["engine_cache"])
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    server_mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert init_mounts[cache] == server_mounts[cache]
    volume = {v["name"]: v for v in pod_spec(workload)["volumes"]}[init_mounts[cache]]
    assert "persistentVolumeClaim" in volume  # outlives the pod: built once per GPU model


@pytest.mark.parametrize(
    ("overlay", "kind", "name"),
    [
        ("gpu", "Deployment", "servelab"),
        ("multi-gpu", "Deployment", "servelab"),
        ("multi-gpu", "Job", "servelab-dist"),
    ],
)
def test_gpu_pods_land_on_gpu_nodes_with_time_to_start(overlay: str, kind: str, name: str) -> None:
    workload = render(overlay).get(kind, name)
    container = next(c for k, c in containers(workload) if k == "main")
    for _, c in containers(workload):
        assert (
            c["resources"]["limits"]["nvidia.com/gpu"]
            == c["resources"]["requests"]["nvidia.com/gpu"]
        )
    spec = pod_spec(workload)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    keys = {e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]}
    assert "nvidia.com/gpu.product" in keys
    # room for an engine build (gpu), or for every rank to load its share (multi-gpu)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    for probe in PROBE_PATHS:  # an exec probe's time includes the interpreter's start
        assert "exec" not in container[probe] or container[probe]["timeoutSeconds"] >= 3


# ----- a real server answers what the manifests ask of it -------------------------------------
@pytest.fixture(scope="module")
def cpu_server(
    encoder_small: ModelHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, ServeConfig]]:
    """`servelab serve` started from the cpu overlay's own ConfigMap and command line; only the
    bind address (loopback), the ports (free ones) and the model folder (this checkout's)
    are overridden."""
    rendered = render("cpu")
    workload, container = next(_server_containers(rendered))
    tmp = tmp_path_factory.mktemp("k8s-server")
    name, key = _config_path(workload, container)
    path = tmp / key
    path.write_text(rendered.get("ConfigMap", name)["data"][key])
    config = _config_of(rendered, workload, container, tmp)
    served = _serve_args(container)
    assert served is not None
    args = served[1:]
    args[args.index("--config") + 1] = str(path)
    args += ["--host", "127.0.0.1", "--model-repository", str(ROOT / "models")]
    args += ["--runner-option", "intra_op_threads=1"]  # 2 shared cores here, not 4
    with ServerProcess(args) as server:
        yield server, config


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ("cpu", "gpu", "multi-gpu"))
def test_probe_paths_and_ports_are_the_servers_endpoints(
    overlay: str, cpu_server: tuple[ServerProcess, ServeConfig], tmp_path: Path
) -> None:
    server, _ = cpu_server
    rendered = render(overlay)
    for workload, container in _server_containers(rendered):
        config = _config_of(rendered, workload, container, tmp_path)
        listener_of = {getattr(config, field): name for name, field in PORT_FIELDS.items()}
        for probe_name in PROBE_PATHS:
            probe = container[probe_name]
            path, port = _probe_target(container, probe)
            listener = listener_of[port]  # port number -> listener
            other = "metrics" if listener != "metrics" else "http"
            if "exec" in probe:  # the script itself, as rank 0 runs it, on the real server
                assert _run_exec_probe(probe, 0, server.ports[listener]) == 0, probe_name
                # the same path on another listener is not served: the port matters
                assert _run_exec_probe(probe, 0, server.ports[other]) != 0, probe_name
                continue
            status, body = _get(f"http://{server.host}:{server.ports[listener]}{path}")
            assert status == 200, (overlay, probe_name, status, body)
            assert json.loads(body) in ({"live": True}, {"ready": True})
            # the same path on another listener is not served: the port matters
            status, _ = _get(f"http://{server.host}:{server.ports[other]}{path}")
            assert status == 404
        annotations = _scrape_annotations(rendered, workload)
        listener = listener_of[int(annotations["prometheus.io/port"])]
        status, body = _get(
            f"http://{server.host}:{server.ports[listener]}{annotations['prometheus.io/path']}"
        )
        assert status == 200 and b"nv_inference_request_success" in body


def _metric_names(page: str) -> set[str]:
    return {m[1] for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", page, re.M)}


@pytest.mark.slow
def test_hpa_metrics_exist_on_the_servers_metrics_page(
    cpu_server: tuple[ServerProcess, ServeConfig],
) -> None:
    server, _ = cpu_server
    status, body = _get(server.metrics_url)
    assert status == 200
    names = _metric_names(body.decode())
    rules = yaml.safe_load((K8S / "overlays" / "gpu" / "prometheus-adapter-rules.yaml").read_text())
    exposed = {rule["name"]["as"]: rule for rule in rules["rules"]}
    checked = 0
    for overlay in OVERLAYS:
        for hpa in render(overlay).of_kind("HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Resource":
                    assert metric["resource"]["name"] in ("cpu", "memory")
                    continue
                assert metric["type"] == "Pods", metric
                wanted = metric["pods"]["metric"]["name"]
                assert wanted in exposed, f"{overlay}: no prometheus-adapter rule makes {wanted}"
                rule = exposed[wanted]
                series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
                assert series is not None
                source = set(re.findall(r"\b(nv_[a-z_]+|servelab_[a-z_]+)\{", rule["metricsQuery"]))
                assert series[0] in source
                assert re.fullmatch(rule["name"]["matches"].strip("^$"), series[0])
                for name in source:
                    assert name in names, f"{overlay}: {name} is not on the server's /metrics"
                    checked += 1
                assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert checked >= 2
    assert "nv_inference_queue_duration_us" in names


def test_metric_name_check_rejects_a_missing_series() -> None:
    assert "nv_inference_queue_duration_us" in _metric_names(
        'nv_inference_queue_duration_us{model="encoder",version="1"} 0\n'
    )
    assert "nv_inference_queue_time_us" not in _metric_names(
        'nv_inference_queue_duration_us{model="encoder",version="1"} 0\n'
    )


# ----- multi-GPU and load test overlays --------------------------------------------------------
def test_multi_gpu_pods_have_shared_memory_and_a_rendezvous() -> None:
    rendered = render("multi-gpu")
    job = rendered.get("Job", "servelab-dist")
    spec = pod_spec(job)
    assert job["spec"]["completionMode"] == "Indexed"
    service = rendered.get("Service", spec["subdomain"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    env = {e["name"]: e for e in containers(job)[0][1]["env"]}
    assert env["MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{spec['subdomain']}"
    assert int(env["MASTER_PORT"]["value"]) in {p["port"] for p in service["spec"]["ports"]}
    assert int(env["NNODES"]["value"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    for workload in (job, rendered.get("Deployment", "servelab")):
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        main = next(c for k, c in containers(workload) if k == "main")
        shm = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}["/dev/shm"]
        assert volumes[shm]["emptyDir"]["medium"] == "Memory"
        gpus = int(main["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus > 1
        if workload is job:
            assert int(env["NPROC_PER_NODE"]["value"]) == gpus


def test_multi_gpu_launches_through_lab_dist(tmp_path: Path) -> None:
    """Both multi-gpu workloads run `servelab dist serve` (parsed by the CLI's own parser,
    the inner `servelab serve` line rebuilt by lab.dist's serve_argv): a torchrun job of one
    rank per GPU is the server's primary runner; no TensorRT engine is built or mounted."""
    rendered = render("multi-gpu")
    deployment = rendered.get("Deployment", "servelab")
    job = rendered.get("Job", "servelab-dist")
    assert not rendered.of_kind("PersistentVolumeClaim")  # no engine cache
    launched = {}
    for workload in (deployment, job):
        where = workload["metadata"]["name"]
        assert not [c for k, c in containers(workload) if k == "init"], where
        main = next(c for k, c in containers(workload) if k == "main")
        assert not any("engine" in m["mountPath"] for m in main["volumeMounts"]), where
        parsed = _parse(main["command"], expand_env(main["args"], main))
        assert (parsed.command, parsed.dist_command) == ("dist", "serve"), where
        assert parsed.nproc == int(main["resources"]["limits"]["nvidia.com/gpu"]), where
        config = _config_of(rendered, workload, main, tmp_path)
        assert config.runner == DIST_RUNNER_SPEC and list(config.model) == [parsed.model]
        runner = create_runner(config.runner, config.runner_options)
        for option in ("mode", "nproc", "nnodes", "rdzv_endpoint", "rdzv_id"):
            wanted = parsed.mode if option == "mode" else getattr(parsed, option)
            assert runner.options[option] == wanted, (where, option)
        launched[where] = parsed, config, main

    parsed, config, _ = launched["servelab"]
    assert (parsed.mode, parsed.model, parsed.nnodes) == ("replicas", "encoder", 1)

    parsed, config, main = launched["servelab-dist"]
    assert (parsed.mode, parsed.model, parsed.size) == ("shard", "ranker", "large")
    assert config.fallback_runner == "none"  # no CPU copy of a model sharded over 8 GPUs
    env = {e["name"]: e for e in main["env"]}
    spec = job["spec"]
    assert parsed.nnodes == int(env["NNODES"]["value"]) == spec["completions"] > 1
    assert parsed.rdzv_endpoint == f"{env['MASTER_ADDR']['value']}:{env['MASTER_PORT']['value']}"
    assert parsed.rdzv_id
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    # the other node ranks join: the torchrun line lab.dist runs there parses with torchrun's
    # own parser, with the same rendezvous and a rank per GPU
    for rank in range(1, spec["completions"]):
        args = expand_env(main["args"], main, {"NODE_RANK": str(rank)})
        joined = _parse(main["command"], args)
        assert joined.node_rank == rank and _serve_args(main, rank) is None
        line = torchrun_command(launch_spec(joined), "lab.dist.rank", [])
        assert line[1:3] == ["-m", "torch.distributed.run"]
        torchrun = _parse(["torchrun"], line[3:])
        assert torchrun.module and torchrun.training_script == "lab.dist.rank"
        assert int(torchrun.nnodes) == parsed.nnodes
        assert int(torchrun.nproc_per_node) == parsed.nproc
        assert torchrun.rdzv_endpoint == parsed.rdzv_endpoint
        assert torchrun.rdzv_id == parsed.rdzv_id


def test_loadtest_targets_the_servers_service() -> None:
    rendered = render("loadtest")
    service = render("cpu").get("Service", "servelab")
    http = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")
    url = f"http://{service['metadata']['name']}:{http}"
    master = rendered.get("Job", "servelab-locust-master")
    worker = rendered.get("Job", "servelab-locust-worker")
    bench = rendered.get("Job", "servelab-bench")
    m = _parse(["locust"], containers(master)[0][1]["args"])
    w = _parse(["locust"], containers(worker)[0][1]["args"])
    b = _parse(["servelab"], containers(bench)[0][1]["args"])
    assert m.host == url and b.target == url
    assert m.master and m.headless and m.expect_workers == worker["spec"]["parallelism"]
    assert w.worker and w.master_port == m.master_bind_port
    master_service = rendered.get("Service", w.master_host)
    assert master_service["spec"]["ports"][0]["port"] == m.master_bind_port
    assert m.locustfile == w.locustfile == "/app/benchmarks/locustfile.py"
    mounts = {x["mountPath"]: x["name"] for x in containers(bench)[0][1]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(bench)["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[b.output]]  # the report outlives the Job
