"""Login rate limiting: too many failed logins for one account, or from one client address, within a sliding
window are refused with HTTP 429 before the password is even checked. A successful login clears its account's
failures (not its address's). The counts live in the server process's memory (one uvicorn worker)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class LoginLimiter:
    """Failed-login timestamps per account name and per client address, kept for `window` seconds."""

    def __init__(
        self, max_per_user: int, max_per_address: int, window: float, clock: Callable[[], float] = time.monotonic
    ):
        if max_per_user < 1 or max_per_address < 1 or window <= 0:
            raise ValueError("LoginLimiter: the limits must be at least 1 and the window positive")
        self.max_per_user, self.max_per_address, self.window, self.clock = max_per_user, max_per_address, window, clock
        self.by_user: dict[str, deque[float]] = {}
        self.by_address: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float]:
        stamps = table.get(key, deque())
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            table.pop(key, None)  # forget keys with no recent failure, so the tables stay small
        return stamps

    def blocked(self, user: str, address: str) -> str | None:
        """Why a login attempt must be refused now (with when to retry), or None."""
        with self.lock:
            now = self.clock()
            for table, key, limit, what in (
                (self.by_user, user, self.max_per_user, "for this account"),
                (self.by_address, address, self.max_per_address, "from your address"),
            ):
                stamps = self._recent(table, key, now)
                if len(stamps) >= limit:
                    wait = int(stamps[0] + self.window - now) + 1
                    return f"too many failed logins {what}; try again in {wait} s"
        return None

    def failed(self, user: str, address: str) -> None:
        with self.lock:
            now = self.clock()
            self.by_user.setdefault(user, deque()).append(now)
            self.by_address.setdefault(address, deque()).append(now)

    def succeeded(self, user: str) -> None:
        with self.lock:
            self.by_user.pop(user, None)
