"""gridgen on a Ray cluster, with Ray Serve: one ``DistributedRunner`` per replica.

Needs the ``ray`` extra (``pip install "gridgen[ray]"``)::

    from ray import serve
    from gridgen.ray import application

    app = application("gridgen.sdxl:SDXLWorker", setup_kwargs={"model": "tiny"},
                      prepare="gridgen.sdxl:ensure_tiny_sdxl", num_replicas=2)
    serve.run(app, name="gridgen", route_prefix="/")

Each replica serves the HTTP API of ``gridgen serve`` (with an ``x-gridgen-replica``
header) and, to a ``DeploymentHandle``, ``invoke``, ``stream`` and ``status``.
``gridgen serve --ray auto --replicas 2`` does the same from the command line. The guide
is docs/ray.md.
"""

try:
    from ray import serve as _serve  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('gridgen.ray needs Ray Serve: pip install "gridgen[ray]"') from exc

from ._deploy import DEFAULT_AUTOSCALING, application, build_app
from ._replica import REPLICA_HEADER, AnyPayload, GridgenReplica, ReplicaSpec

__all__ = [
    "DEFAULT_AUTOSCALING",
    "REPLICA_HEADER",
    "AnyPayload",
    "GridgenReplica",
    "ReplicaSpec",
    "application",
    "build_app",
]
