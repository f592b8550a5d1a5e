"""What a refusal shows about itself, for tests that compare the refusals of a foreign id and a
missing one: they must be identical, so that existence never leaks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from chat.errors import NotFound


def refusal(call: Callable[[], Any]) -> tuple[type, tuple[Any, ...], bytes, str, str]:
    """Everything a refusal could show about itself: its class, args, message bytes, repr, error class."""
    with pytest.raises(NotFound) as raised:
        call()
    exc = raised.value
    return type(exc), exc.args, str(exc).encode(), repr(exc), str(exc.error_class())
