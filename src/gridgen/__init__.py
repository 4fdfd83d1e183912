"""gridgen: run image generation across GPUs, one worker process per GPU."""
from .errors import (
    Cancelled,
    CodecError,
    GridgenError,
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
from .worker import DistributedWorker

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "CodecError",
    "DistributedWorker",
    "GridgenError",
    "PayloadTooLarge",
    "QueueFull",
    "RequestCancelled",
    "RequestTimeout",
    "RunnerClosed",
    "StartupError",
    "StartupTimeout",
    "WorkerDiedError",
    "WorkerError",
    "__version__",
]
