"""gridgen: run image generation across GPUs, one worker process per GPU."""
from ._batch import Batch, BatchItem
from ._requests import RequestState, StreamItem, StreamResult
from ._sync import SyncRunner
from .errors import (
    Cancelled,
    CodecError,
    GridgenError,
    InvalidRequestError,
    LoraLoadError,
    ModelNotFoundError,
    PayloadTooLarge,
    QueueFull,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    RunnerClosed,
    RunnerError,
    StartupError,
    StartupTimeout,
    WorkerDiedError,
    WorkerError,
    WorkerFailure,
)
from .grid import make_grid
from .images import EncodedImage, encode_image
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
    "InvalidRequestError",
    "LoraLoadError",
    "ModelNotFoundError",
    "PayloadTooLarge",
    "QueueFull",
    "RequestCancelled",
    "RequestError",
    "RequestHandle",
    "RequestState",
    "RequestTimeout",
    "RunnerClosed",
    "RunnerError",
    "StartupError",
    "StartupTimeout",
    "StreamItem",
    "StreamResult",
    "SyncRunner",
    "WorkerDiedError",
    "WorkerError",
    "WorkerFailure",
    "__version__",
    "encode_image",
    "make_grid",
]
