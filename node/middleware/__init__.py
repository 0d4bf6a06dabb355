"""Node middleware: one concern per module, each a ``dramatiq.Middleware``."""

from .drain import StopConsumingOnShutdown
from .lifecycle import JobLifecycle
from .preemption import Preemption
from .prefetch import Prefetch
from .submission import JobSubmission

__all__ = ["JobLifecycle", "JobSubmission", "Prefetch", "Preemption", "StopConsumingOnShutdown"]
