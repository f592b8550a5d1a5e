"""One instance of something per running event loop (the process hub, its Redis client, the run
supervisor, ...). Production has one loop per process; tests and `async_to_sync` make others,
so an instance must never be shared across loops, and those of closed loops are dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    def __init__(self, factory: Callable[..., T]) -> None:
        self.factory = factory
        self._items: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self, *args: Any) -> T:
        """The running loop's instance, created on first use (`factory(*args)`; later calls'
        arguments are not looked at)."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            for closed in [lp for lp in self._items if lp.is_closed()]:
                del self._items[closed]
            item = self._items[loop] = self.factory(*args)
        return item

    def current(self) -> T | None:
        """The running loop's instance if it has one (never creates)."""
        return self._items.get(asyncio.get_running_loop())

    def pop_current(self) -> T | None:
        """Forget the running loop's instance and return it (tests' teardown)."""
        return self._items.pop(asyncio.get_running_loop(), None)
