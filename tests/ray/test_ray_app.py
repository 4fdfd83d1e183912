"""``gridgen.ray`` without a cluster: what ``application()`` tells Ray Serve, the options it
refuses, the config-file builder, the KubeRay example manifest, errors crossing Ray, and the
command line's argument checks (which answer before anything connects to Ray)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from gridgen import StartupError, StartupTimeout, WorkerDiedError, WorkerError
from gridgen.cli import main
from gridgen.cli._ray import parse_replicas
from gridgen.ray import DEFAULT_AUTOSCALING, AnyPayload, ReplicaSpec, application, build_app
from gridgen.ray._replica import resolve
from gridgen.sdxl import SDXLWorker
from gridgen.testing import ProbeWorker

ROOT = Path(__file__).resolve().parents[2]
PROBE = "gridgen.testing:ProbeWorker"


def _deployment(app: Any) -> Any:
    # Ray's Application keeps its deployment in a private attribute; the Deployment's own
    # properties (max_ongoing_requests...) are public.
    return app._bound_deployment


def _spec(app: Any) -> ReplicaSpec:
    [spec] = _deployment(app).init_args
    assert isinstance(spec, ReplicaSpec)
    return spec


def test_a_replica_takes_exactly_what_its_runner_holds() -> None:
    deployment = _deployment(application(PROBE, num_replicas=3, max_queue=5, retry_after=4))
    assert deployment.max_ongoing_requests == 6  # one running + max_queue waiting
    assert deployment.max_queued_requests == 18  # at each caller: what the three replicas hold
    assert deployment.backpressure_config.status_code == 503
    assert deployment.backpressure_config.retry_after_s == 4
    assert deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_cpus"] == 1
    assert "num_gpus" not in deployment.ray_actor_options
    router = deployment._deployment_config.request_router_config.request_router_class
    assert router == "gridgen.ray._routing:LeastBusyRouter"  # not the proxy's node first
    spec = _spec(application(PROBE, max_queue=5, cpu_ranks=2))
    assert (spec.max_queue, spec.cpu_ranks, spec.gpus, spec.worker_cls) == (5, 2, 0, ProbeWorker)


def test_gpus_are_reserved_per_replica_one_rank_each() -> None:
    app = application(PROBE, gpus=2, max_queue=0, num_cpus=4)
    assert _deployment(app).ray_actor_options == {"num_gpus": 2, "num_cpus": 4}
    assert _spec(app).gpus == 2
    assert _deployment(app).max_ongoing_requests == 1


def test_autoscaling_defaults_and_knobs() -> None:
    config = _deployment(application(PROBE, autoscaling=(1, 4), max_queue=3))._deployment_config
    scaling = config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    assert scaling.target_ongoing_requests == DEFAULT_AUTOSCALING["target_ongoing_requests"] == 2
    assert scaling.upscale_delay_s == 10 and scaling.downscale_delay_s == 300
    assert config.max_queued_requests == 4 * 4  # sized for max_replicas

    knobs = {"min_replicas": 0, "max_replicas": 3, "upscale_delay_s": 1, "target_ongoing_requests": 5}
    scaling = _deployment(application(PROBE, autoscaling=knobs))._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.upscale_delay_s) == (0, 3, 1)
    assert scaling.target_ongoing_requests == 5 and scaling.downscale_delay_s == 300

    no_queue = _deployment(application(PROBE, autoscaling=(1, 2), max_queue=0))._deployment_config
    assert no_queue.autoscaling_config.target_ongoing_requests == 1


def test_setup_kwargs_runner_options_and_models_pass_through() -> None:
    spec = _spec(
        application(
            "gridgen.testing.ProbeWorker",
            setup_kwargs={"teardown_marker": "/tmp/x"},
            runner_options={"request_timeout": 30, "auto_restart": False},
            request_model="gridgen.sdxl:GenerateRequest",
            title="t",
        )
    )
    assert spec.setup_kwargs == {"teardown_marker": "/tmp/x"}
    assert spec.runner_options == {"request_timeout": 30, "auto_restart": False}
    assert spec.app_options["request_model"] == "gridgen.sdxl:GenerateRequest"
    assert spec.app_options["title"] == "t"
    # Workers that bring no request model take any JSON object.
    assert _spec(application(PROBE)).app_options["request_model"] == "gridgen.ray:AnyPayload"
    assert AnyPayload.model_validate({"op": "echo", "n": [1]}).model_dump() == {"op": "echo", "n": [1]}
    # the worker's family's own model (gridgen.sdxl.GenerateRequest is the same class)
    assert _spec(application(SDXLWorker)).app_options["request_model"] == "gridgen.diffusion.families.sdxl:GenerateRequest"


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"runner_options": {"world_size": 2}}, "runner_options['world_size']"),
        ({"runner_options": {"device": "cuda"}}, "runner_options['device']"),
        ({"runner_options": {"devices": [0]}}, "runner_options['devices']"),
        ({"runner_options": {"max_queue": 3}}, "runner_options['max_queue']"),
        ({"deployment_options": {"max_ongoing_requests": 9}}, "deployment_options['max_ongoing_requests']"),
        ({"deployment_options": {"num_replicas": 2}}, "deployment_options['num_replicas']"),
        ({"num_replicas": 2, "autoscaling": (1, 2)}, "num_replicas and autoscaling"),
        ({"num_replicas": 0}, "num_replicas"),
        ({"max_queue": -1}, "max_queue"),
        ({"cpu_ranks": 0}, "cpu_ranks"),
        ({"gpus": -1}, "gpus"),
        ({"autoscaling": (3, 1)}, "autoscaling"),
        ({"max_queued_requests": 0}, "max_queued_requests"),
        ({"retry_after": -1}, "retry_after"),
    ],
)
def test_bad_options_are_refused_naming_the_option(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("]", r"\]")):
        application(PROBE, **kwargs)


def test_a_worker_class_must_be_a_distributed_worker() -> None:
    with pytest.raises(TypeError, match="DistributedWorker"):
        application("builtins:dict")
    with pytest.raises(ModuleNotFoundError):
        application("no_such_module:Worker")


def test_build_app_takes_config_file_arguments() -> None:
    spec = _spec(build_app({"model": "tiny", "cpu_ranks": "2", "max_queue": "3", "num_replicas": "2"}))
    assert spec.worker_cls is SDXLWorker
    assert spec.setup_kwargs == {"model": "tiny"}
    assert spec.prepare == "gridgen.sdxl:ensure_tiny_sdxl"  # the tiny model is built on each node
    assert (spec.cpu_ranks, spec.max_queue) == (2, 3)
    probe = build_app({"worker": PROBE, "autoscaling": [1, 3]})
    assert _spec(probe).worker_cls is ProbeWorker
    assert _deployment(probe)._deployment_config.autoscaling_config.max_replicas == 3


def test_kuberay_rayservice_example_parses_and_builds_its_application() -> None:
    manifest = yaml.safe_load((ROOT / "examples" / "kuberay-rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    [app_config] = serve_config["applications"]
    assert resolve(app_config["import_path"]) is build_app
    app = build_app(app_config["args"])
    deployment = _deployment(app)
    cluster = manifest["spec"]["rayClusterConfig"]
    [workers] = cluster["workerGroupSpecs"]
    [container] = workers["template"]["spec"]["containers"]
    gpus_per_pod = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert deployment.ray_actor_options["num_gpus"] == gpus_per_pod == _spec(app).gpus
    scaling = deployment._deployment_config.autoscaling_config
    assert scaling.max_replicas <= workers["maxReplicas"] * gpus_per_pod
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] in container["image"]
    head_ports = {p["name"]: p["containerPort"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports["serve"] == serve_config["http_options"]["port"]
    assert "examples/kuberay-rayservice.yaml" in (ROOT / "docs" / "ray.md").read_text()


def test_worker_errors_keep_their_fields_across_ray_pickling() -> None:
    for cls in (WorkerError, StartupError, StartupTimeout):
        error = cls("rank 1 raised X", rank=1, remote_type="X", remote_message="m", remote_traceback="tb")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls
        assert (copy.rank, copy.remote_type, copy.remote_message, copy.remote_traceback) == (1, "X", "m", "tb")
        assert str(copy) == str(error)
    died = pickle.loads(pickle.dumps(WorkerDiedError(1, -9)))
    assert (died.rank, died.exitcode, died.signal, str(died)) == (1, -9, "SIGKILL", "worker rank 1 was killed by SIGKILL")


def test_replicas_option_parses_a_count_or_a_range() -> None:
    assert parse_replicas(None) == (1, None)
    assert parse_replicas("3") == (3, None)
    assert parse_replicas("1-4") == (None, (1, 4))
    assert parse_replicas("0:2") == (None, (0, 2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "2"], "--replicas needs --ray"),
        (["--ray", "auto", "--replicas", "0"], "--replicas: must be at least 1"),
        (["--ray", "auto", "--replicas", "3-1"], "--replicas: need MIN <= MAX"),
        (["--ray", "auto", "--replicas", "two"], "--replicas: must be N or MIN-MAX"),
        (["--ray", "auto", "--port", "0"], "--port"),
        (["--ray", "auto", "--max-queue", "-1"], "--max-queue"),
        (["--ray", "auto", "--model", "./no/such/folder"], "--model: no such folder"),
        (["--ray", "127.0.0.1:1"], "--ray: no Ray cluster answers at 127.0.0.1:1"),
        (["--ray", "headnode"], "--ray: expected HOST:PORT"),
    ],
)
def test_serve_ray_bad_arguments_exit_2_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_public_names_are_documented_and_listed_in_the_api_reference() -> None:
    import inspect

    import gridgen.ray

    for name in gridgen.ray.__all__:
        value = getattr(gridgen.ray, name)
        if callable(value):
            assert inspect.getdoc(value), f"gridgen.ray.{name} has no docstring"
    for method in ("invoke", "stream", "status", "check_health"):
        assert inspect.getdoc(getattr(gridgen.ray.GridgenReplica, method)), method
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("::: gridgen.ray\n", 1)[1].split(":::", 1)[0]
    listed = {line.strip()[2:] for line in section.splitlines() if line.strip().startswith("- ")}
    assert listed == set(gridgen.ray.__all__)
