"""rcluster: a process supervisor for pre-forked servers.

Primary side::

    with rcluster.Supervisor(workers=4, listen=["127.0.0.1:8080"]) as sup:
        for ev in sup.events():
            print(ev)

Worker side (the same program, re-run by the primary)::

    if rcluster.is_worker():
        asyncio.run(rcluster.aio.serve(MyProtocol))

Task pools: ``with rcluster.Pool(workers=4) as pool: pool.submit(fn, x).result()`` (a
``concurrent.futures.Executor`` whose workers are supervised processes).

Messages are bytes (``send_json`` / ``send_pickle`` are explicit choices); errors are
subclasses of :class:`rcluster.Error`. Linux only.
"""

from . import aio
from ._rcluster import DEFAULT_MAX_MESSAGE, MAX_WORKERS, default_workers
from .errors import (
    BindError,
    ConfigError,
    Error,
    IoError,
    MessageTooLargeError,
    NoSuchWorkerError,
    NotAWorkerError,
    PoolBrokenError,
    ProtocolError,
    QueueFullError,
    SerializationError,
    SpawnError,
    StoppedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from .pool import Pool
from .supervisor import (
    Event,
    ExitInfo,
    Listener,
    RestartPolicy,
    Supervisor,
    WorkerInfo,
    default_argv,
)
from .worker import (
    Connection,
    Disconnect,
    Message,
    Worker,
    inherited_listeners,
    is_worker,
    serve,
    worker,
)

__version__ = "0.1.0"

__all__ = [
    "aio",
    "DEFAULT_MAX_MESSAGE",
    "MAX_WORKERS",
    "default_workers",
    "BindError",
    "ConfigError",
    "Error",
    "IoError",
    "MessageTooLargeError",
    "NoSuchWorkerError",
    "NotAWorkerError",
    "ProtocolError",
    "QueueFullError",
    "SpawnError",
    "StoppedError",
    "WorkerCrashedError",
    "TaskTimeoutError",
    "PoolBrokenError",
    "SerializationError",
    "Pool",
    "Event",
    "ExitInfo",
    "Listener",
    "RestartPolicy",
    "Supervisor",
    "WorkerInfo",
    "default_argv",
    "Connection",
    "Disconnect",
    "Message",
    "Worker",
    "inherited_listeners",
    "is_worker",
    "serve",
    "worker",
]
