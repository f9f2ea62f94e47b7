"""The backend's lifetime while other threads call into its vocabulary (tokenize, token bytes).

Not engine state: the engine thread owns the scheduler, the pool and the requests. A lease only
keeps the native handles alive; `close()` frees them once no lease is held.
"""

from __future__ import annotations

import contextlib
import threading
import time

from ..errors import EngineUnavailableError


class Leases:
    """Counts vocabulary calls in flight; `retire()` refuses new ones and waits (bounded) for the rest."""

    def __init__(self):
        self._cond = threading.Condition()
        self._count = 0
        self._retired = False

    @contextlib.contextmanager
    def hold(self, resource):
        """Yield `resource` while counted; raises EngineUnavailableError once retired."""
        with self._cond:
            if self._retired:
                raise EngineUnavailableError("engine stopped")
            self._count += 1
        try:
            yield resource
        finally:
            with self._cond:
                self._count -= 1
                self._cond.notify_all()

    def retire(self, timeout: float) -> bool:
        """Refuse new leases; True once none is held (within `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._retired = True
            while self._count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True
