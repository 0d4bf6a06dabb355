"""Middleware hooks called only where a middleware implements them.

Dramatiq's ``Broker.emit_before`` / ``emit_after`` look up and call the hook on *every* middleware for every
signal, most of them the base class's no-op: a node has a dozen middleware and a job emits a handful of
signals, so that is ~50 attribute lookups and calls per job — measurable beside a no-op job
(``bench/lifecycle_cpu.py``). ``HookDispatch`` keeps, per signal, the bound hooks of the middleware whose
class overrides it, in Dramatiq's order, and calls those with Dramatiq's error handling (a
``MiddlewareError`` such as ``SkipMessage`` raised from a *before* hook propagates; anything else is logged).
The lists are rebuilt whenever the middleware list changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dramatiq.middleware import Middleware, MiddlewareError

Hook = Callable[..., Any]


class HookDispatch:
    """Mixin for a ``dramatiq.Broker`` (listed before it): the same signals, only the hooks that exist."""

    middleware: list[Middleware]
    logger: Any

    def _hooks(self, name: str, *, reverse: bool) -> list[Hook] | None:
        """The hooks ``name`` of the middleware (``None``: a signal the base class does not declare)."""
        cache: dict[str, tuple[tuple[int, ...], list[Hook]]] = self.__dict__.setdefault("_hook_cache", {})
        key = tuple(map(id, self.middleware))
        cached = cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        base = getattr(Middleware, name, None)
        if base is None:
            return None
        ordered = reversed(self.middleware) if reverse else self.middleware
        hooks = [getattr(m, name) for m in ordered if getattr(type(m), name, base) is not base or name in vars(m)]
        cache[name] = (key, hooks)
        return hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "before_" + signal
        hooks = self._hooks(name, reverse=False)
        if hooks is None:
            super().emit_before(signal, *args, **kwargs)  # type: ignore[misc]
            return
        for hook in hooks:
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        name = "after_" + signal
        hooks = self._hooks(name, reverse=True)
        if hooks is None:
            super().emit_after(signal, *args, **kwargs)  # type: ignore[misc]
            return
        for hook in hooks:
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)
