"""gridgen: run image generation across GPUs, one worker process per GPU."""
from ._batch import Batch, BatchItem
from ._codec import EncodedImage, encode_image
from ._sync import SyncRunner
from .errors import (
    Cancelled,
    CodecError,
    GridgenError,
    ModelNotFoundError,
    PayloadTooLarge,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RunnerClosed,
    StartupError,
    StartupTimeout,
    WorkerDiedError,
    WorkerError,
)
from .grid import make_grid
from .runner import DistributedRunner, RequestHandle
from .worker import DistributedWorker

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchItem",
    "Cancelled",
    "CodecError",
    "DistributedRunner",
    "DistributedWorker",
    "EncodedImage",
    "GridgenError",
    "ModelNotFoundError",
    "PayloadTooLarge",
    "QueueFull",
    "RequestCancelled",
    "RequestHandle",
    "RequestTimeout",
    "RunnerClosed",
    "StartupError",
    "StartupTimeout",
    "SyncRunner",
    "WorkerDiedError",
    "WorkerError",
    "__version__",
    "encode_image",
    "make_grid",
]
