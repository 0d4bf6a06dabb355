"""Node middleware: one concern per module, each a ``dramatiq.Middleware``."""

from .drain import StopConsumingOnShutdown
from .prefetch import Prefetch

__all__ = ["Prefetch", "StopConsumingOnShutdown"]
