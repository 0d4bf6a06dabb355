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
        cache: dict[str, tuple[list[Middleware], list[Hook]]] = self.__dict__.setdefault("_hook_cache", {})
        cached = cache.get(name)
        # A copy of the list the hooks were taken from: comparing it with the current list is one C loop of
        # identity checks (the same objects compare equal without calling ``__eq__``).
        if cached is not None and cached[0] == self.middleware:
            return cached[1]
        base = getattr(Middleware, name, None)
        if base is None:
            return None
        ordered = reversed(self.middleware) if reverse else self.middleware
        hooks = [getattr(m, name) for m in ordered if getattr(type(m), name, base) is not base or name in vars(m)]
        cache[name] = (list(self.middleware), hooks)
        return hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if not self._emit("before_" + signal, args, kwargs, reverse=False):
            super().emit_before(signal, *args, **kwargs)  # type: ignore[misc]

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if not self._emit("after_" + signal, args, kwargs, reverse=True):
            super().emit_after(signal, *args, **kwargs)  # type: ignore[misc]

    def _emit(self, name: str, args: tuple, kwargs: dict[str, Any], *, reverse: bool) -> bool:
        """Call the hooks ``name`` as Dramatiq would (a *before* hook's ``MiddlewareError`` propagates);
        ``False`` for a signal the base class does not declare (Dramatiq's own dispatch handles it)."""
        hooks = self._hooks(name, reverse=reverse)
        if hooks is None:
            return False
        for hook in hooks:
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                if not reverse:
                    raise
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", name, hook.__self__, exc_info=True)
        return True
