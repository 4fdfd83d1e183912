"""One image on several GPUs: the ``parallel`` option of
:meth:`DiffusionWorker.setup <gridgen.diffusion.DiffusionWorker.setup>`, its rules, its
process groups, and the split of one image's work inside a group.

The ranks form **groups** of ``cfg x ring x ulysses`` ranks (world size = groups x that).
Data parallelism runs across the groups: a request's images are strided over the groups,
not the ranks (:class:`~gridgen.diffusion.batching.BatchPlan`), each image with its own
seed, so an image does not depend on the grouping. Inside a group every rank works on the
same images:

* **CFG parallel** (``cfg=2``; SDXL, SD3.5): the rank pair splits the batch the pipeline
  hands its denoiser, ``[unconditional; conditional]``; each rank runs its half and the
  pair all-gathers the two halves back (:class:`CfgSplit`), so the pipeline combines them
  with the guidance scale exactly as diffusers does.
* **Sequence parallel** (``ulysses``, ``ring``; FLUX.1): diffusers' own context
  parallelism (``ContextParallelConfig``, ``enable_parallelism``) over this group's ranks.

The groups are the dimensions of one ``DeviceMesh`` ``("dp", "cfg", "ring", "ulysses")``
built once at setup on the default backend (gloo on CPU, NCCL on GPUs), so every
collective names its group: the CFG exchange the ``cfg`` dimension, diffusers' attention
the ``ring`` / ``ulysses`` ones, the gather of finished images the ``dp`` group of the
group leaders (local rank 0 of each group; rank 0 is one). Without ``parallel`` nothing is
created and every rank is its own group, as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .families import Family

__all__ = ["CfgSplit", "ParallelGroups", "Parallelism", "check_parallel", "check_sequence_request"]

DEGREES = ("cfg", "ulysses", "ring")
_TEXT = re.compile(r"^\s*(\w+)\s*=\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Parallelism:
    """Degrees of the split of one image inside a group; all 1: data parallel only."""

    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    @classmethod
    def parse(cls, value: Parallelism | Mapping[str, Any] | str | None) -> Parallelism:
        """From ``{"cfg": 2, "ulysses": 2}``, ``"cfg=2,ulysses=2"`` or ``None``.

        Raises:
            ValueError: an unknown degree, or one that is not a whole number >= 1.
        """
        if value is None:
            return cls()
        if isinstance(value, Parallelism):
            return value
        if isinstance(value, str):
            pairs: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in value.split(","))):
                match = _TEXT.match(part)
                if match is None:
                    raise ValueError(f"parallel: {part!r} is not NAME=N (e.g. cfg=2,ulysses=2)")
                pairs[match.group(1)] = int(match.group(2))
            value = pairs
        if not isinstance(value, Mapping):
            raise ValueError(f"parallel: expected a dict like {{'cfg': 2}}, got {type(value).__name__}")
        unknown = sorted(set(value) - set(DEGREES))
        if unknown:
            raise ValueError(f"parallel: unknown degree {unknown[0]!r}; the degrees are {', '.join(DEGREES)}")
        for name, degree in value.items():
            if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
                raise ValueError(f"parallel.{name}: must be a whole number >= 1, got {degree!r}")
        if value.get("cfg", 1) > 2:
            raise ValueError(f"parallel.cfg: must be 1 or 2 (two branches: unconditional, conditional), got {value['cfg']}")
        return cls(**value)

    @property
    def group_size(self) -> int:
        """Ranks that make one image together."""
        return self.cfg * self.ulysses * self.ring

    @property
    def sequence(self) -> int:
        """The sequence-parallel degree (ulysses x ring)."""
        return self.ulysses * self.ring

    def __str__(self) -> str:
        text = ",".join(f"{name}={getattr(self, name)}" for name in DEGREES if getattr(self, name) > 1)
        return text or "none"


def check_parallel(
    parallel: Parallelism, family: Family, world_size: int | None, device: str | None = None,
    dtype: Any = None, step_cache: float | None = None,
) -> None:
    """Refuse a configuration that cannot run, naming the option and the rule (one
    ``ValueError``). ``world_size``, ``device`` and ``dtype`` are checked when known (the
    host's preflight may not know them yet)."""
    if world_size is not None and world_size % parallel.group_size:
        raise ValueError(
            f"parallel={parallel}: a group is cfg x ulysses x ring = {parallel.group_size} ranks, "
            f"which must divide the world size {world_size}"
        )
    for name in DEGREES:
        if getattr(parallel, name) > 1 and name in family.parallel_refusals:
            raise ValueError(f"parallel.{name}: not for {family.title}: {family.parallel_refusals[name]}")
    if parallel.ring > 1 and device is not None:
        import torch

        sixteen = dtype in (None, torch.float16, torch.bfloat16, "fp16", "bf16", "float16", "bfloat16")
        if torch.device(device).type != "cuda" or not sixteen:
            raise ValueError(
                "parallel.ring: ring attention needs an attention kernel that returns its "
                "log-sum-exp (diffusers' _native_cudnn backend: CUDA and float16/bfloat16); "
                "on CPU or in float32 use ulysses"
            )
    if step_cache is not None and parallel.group_size > 1:
        raise ValueError(
            "step_cache: only with data parallelism (parallel degrees 1): each rank of a group "
            "would decide on its own part of the image whether to skip a step"
        )


def check_sequence_request(parallel: Parallelism, request: Any, patch: int = 16) -> None:
    """A FLUX.1 image of ``(width/16) x (height/16)`` tokens is split evenly over the
    sequence-parallel ranks: refuse a size that does not split (the same on every rank)."""
    if parallel.sequence == 1:
        return
    tokens = (request.width // patch) * (request.height // patch)
    if tokens % parallel.sequence:
        from ..errors import InvalidRequestError
        from .request import FieldError

        raise InvalidRequestError([FieldError(
            field="width", rule="sequence_parallel_split",
            message=f"with parallel ulysses x ring = {parallel.sequence}, the image's "
            f"(width/{patch}) x (height/{patch}) = {tokens} tokens must be a multiple of "
            f"{parallel.sequence}: pick a width and height that are",
        )])


class ParallelGroups:
    """This rank's place: its group, whether it leads it, and the process groups it uses."""

    def __init__(self, parallel: Parallelism, rank: int, world_size: int, mesh: Any = None) -> None:
        self.parallel = parallel
        self.mesh = mesh
        size = parallel.group_size
        self.groups = world_size // size
        """How many groups: the data-parallel degree."""
        self.group = rank // size
        """This rank's group: the images it makes are ``BatchPlan.share(group)``."""
        self.leader = rank % size == 0
        """Local rank 0: decodes, previews and sends the group's images to rank 0."""
        self.data_group = None if mesh is None else mesh["dp"].get_group()
        """The process group across groups (``None``: the default group, data parallel only)."""
        self.cfg_branch = (rank % size) // parallel.sequence
        """0: unconditional half, 1: conditional half (CFG parallel)."""

    @classmethod
    def build(cls, parallel: Parallelism, rank: int, world_size: int, device: torch.device) -> ParallelGroups:
        """Create the process groups (collective: every rank, once, at setup)."""
        if parallel.group_size == 1:
            return cls(parallel, rank, world_size)
        from torch.distributed.device_mesh import init_device_mesh

        shape = (world_size // parallel.group_size, parallel.cfg, parallel.ring, parallel.ulysses)
        mesh = init_device_mesh(device.type, shape, mesh_dim_names=("dp", "cfg", "ring", "ulysses"))
        return cls(parallel, rank, world_size, mesh)

    def apply(self, pipeline: Any, denoiser: str) -> CfgSplit | None:
        """Split the denoiser's work over this group (after the speed levers, so the split
        wraps whatever they made of the model's forward). Returns the CFG hook, if any."""
        model = getattr(pipeline, denoiser)
        if self.parallel.sequence > 1:
            enable_sequence_parallel(model, self.parallel, self.mesh)
        if self.parallel.cfg == 1:
            return None
        split = CfgSplit(self.mesh["cfg"].get_group(), self.cfg_branch)
        split.register(model)
        return split


def enable_sequence_parallel(model: Any, parallel: Parallelism, mesh: Any) -> None:
    """diffusers' context parallelism over the mesh's ``ring`` and ``ulysses`` dimensions."""
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    if parallel.ring > 1:
        model.set_attention_backend("_native_cudnn")  # returns the log-sum-exp ring attention needs
    config = ContextParallelConfig(  # type: ignore[no-untyped-call]
        ring_degree=parallel.ring, ulysses_degree=parallel.ulysses, mesh=mesh
    )
    device = next(model.parameters()).device

    def resolve(config: Any) -> Any:
        # diffusers' own resolver picks the device as rank % accelerator count, which is a
        # division by zero on CPU and may not be this worker's GPU; the mesh is ours anyway.
        config = ParallelConfig(context_parallel_config=config) if isinstance(config, ContextParallelConfig) else config
        config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
        model._parallel_config = config
        return config

    model._resolve_parallel_config = resolve
    model.enable_parallelism(config=config)


class CfgSplit:
    """The CFG split of the denoiser's forward (a diffusers hook, see :meth:`register`):
    given the batch ``[uncond; cond]`` (2B rows), run only this rank's half and all-gather
    the pair's halves back into 2B rows.

    Active while :attr:`pipeline` (set by the worker before each call) runs classifier-free
    guidance, decided by diffusers' own ``do_classifier_free_guidance``; otherwise
    (guidance <= 1) both ranks run the whole batch.
    """

    def __init__(self, group: Any, branch: int) -> None:
        self.group = group
        self.branch = branch
        self.pipeline: Any = None

    def register(self, model: Any) -> None:
        """Wrap ``model``'s forward (outermost: after the speed levers and context parallelism)."""
        from diffusers.hooks.hooks import HookRegistry, ModelHook

        split = self

        class _CfgHook(ModelHook):  # type: ignore[misc]
            def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
                return split(self.fn_ref.original_forward, *args, **kwargs)

        HookRegistry.check_if_exists_or_initialize(model).register_hook(
            _CfgHook(), "gridgen_cfg_parallel"  # type: ignore[no-untyped-call]
        )

    def __call__(self, forward: Any, *args: Any, **kwargs: Any) -> Any:
        if self.pipeline is None or not self.pipeline.do_classifier_free_guidance:
            return forward(*args, **kwargs)
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        rows = int(sample.shape[0])  # type: ignore[union-attr]
        half = rows // 2
        part = slice(self.branch * half, (self.branch + 1) * half)
        output = forward(*_halve(args, rows, part), **_halve(kwargs, rows, part))
        return _map_first(output, self._exchange)

    def _exchange(self, mine: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.distributed as dist

        mine = mine.contiguous()
        halves = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(halves, mine, group=self.group)
        return torch.cat(halves)


def _halve(value: Any, rows: int, part: slice) -> Any:
    """Every tensor with ``rows`` rows cut to ``part`` (inside tuples, lists and dicts)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value[part] if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, dict):
        return {key: _halve(item, rows, part) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_halve(item, rows, part) for item in value)
    return value


def _map_first(output: Any, fn: Any) -> Any:
    """The denoiser's output with its first tensor replaced by ``fn(it)`` (a tuple, or an
    output dataclass with ``sample``)."""
    import torch

    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple):
        return (fn(output[0]), *output[1:])
    output.sample = fn(output.sample)
    return output
