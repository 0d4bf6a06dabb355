"""Node middleware: Dramatiq hooks only, one concern per module, each a ``dramatiq.Middleware``."""

from .async_actors import AsyncActors
from .cancel import CancelListener
from .chaining import Callbacks, Pipelines
from .heartbeat import NodeHeartbeat
from .lifecycle import JobLifecycle
from .prefetch import Prefetch
from .shutdown import Shutdown
from .slot import SlotConsumer
from .submission import JobSubmission
from .tracing import Tracing

__all__ = [
    "AsyncActors",
    "Callbacks",
    "CancelListener",
    "JobLifecycle",
    "JobSubmission",
    "NodeHeartbeat",
    "Pipelines",
    "Prefetch",
    "Shutdown",
    "SlotConsumer",
    "Tracing",
]
