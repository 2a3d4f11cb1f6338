"""Login rate limiting per account and per client address: the limiter with a fake clock, and the real server
over HTTP on 127.0.0.1 (clients bound to 127.0.0.1 and 127.0.0.2 to act as two addresses)."""

from __future__ import annotations

import re

import httpx
from label_helpers import PASSWORD, running_server
from sqlalchemy import select

from rlhf.labeling_app.app import create_app
from rlhf.labeling_app.auth import create_user
from rlhf.labeling_app.db import open_database
from rlhf.labeling_app.ratelimit import Admission, LoginLimiter, Refusal, account_bucket, address_bucket
from rlhf.labeling_app.settings import LabelSettings
from rlhf.labeling_app.tables import LoginLimit


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_login_limiter_counts_attempts_per_account_and_address_in_a_sliding_window(tmp_path):
    clock = Clock()
    limiter = LoginLimiter(max_per_user=3, max_per_address=5, window=60, clock=clock)
    with open_database(f"sqlite:///{tmp_path / 'limits.db'}")() as db:
        for _ in range(3):
            assert isinstance(limiter.admit(db, "eve", "1.2.3.4"), Admission)
            clock.now += 1
        refused = limiter.admit(db, "eve", "1.2.3.4")  # 1000 + 60 - 1003 + 1
        assert refused == Refusal("too many failed logins for this account; try again in 58 s", 58)
        assert isinstance(limiter.admit(db, "EVE", "9.9.9.9"), Refusal)  # from any address, in any case
        assert isinstance(limiter.admit(db, "bob", "1.2.3.4"), Admission)  # eve's lock is not bob's (4 < 5)
        assert isinstance(limiter.admit(db, "bob", "1.2.3.4"), Admission)
        refused = limiter.admit(db, "carol", "1.2.3.4")
        assert "from your address" in refused.message and isinstance(limiter.admit(db, "carol", "5.5.5.5"), Admission)
        clock.now = 1060.5  # eve's attempts at 1000, 1001 have aged out of the window
        assert isinstance(limiter.admit(db, "eve", "9.9.9.9"), Admission)
        # a success clears the account's attempts and takes its own attempt back from the address
        first = limiter.admit(db, "dan", "7.7.7.7")
        limiter.succeeded(db, limiter.admit(db, "dan", "7.7.7.7"))
        rows = {row.bucket: row.stamps for row in db.scalars(select(LoginLimit))}
        assert rows[account_bucket("dan")] == [] and rows[address_bucket("7.7.7.7")] == [first.at]


def login(
    url: str, name: str, password: str, address: str = "127.0.0.1", headers: dict | None = None
) -> httpx.Response:
    """One login from a fresh session bound to the client `address` (any 127.x address reaches the server)."""
    with httpx.Client(
        base_url=url,
        transport=httpx.HTTPTransport(local_address=address),
        follow_redirects=False,
        timeout=30,
        headers=headers,
    ) as http:
        csrf = re.search(r'name="csrf" value="([^"]+)"', http.get("/login").text).group(1)
        return http.post("/login", data={"name": name, "password": password, "csrf": csrf})


def test_repeated_failed_logins_get_http_429_per_account_and_per_address(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path / 'label.db'}")
    with sessions() as db:
        for name in ("lab0", "lab1", "lab2"):
            create_user(db, name, PASSWORD, "labeler")
    settings = LabelSettings(
        secret_key="k", login_max_failures_per_user=3, login_max_failures_per_address=10, login_window_seconds=600
    )
    with running_server(create_app(settings, sessions), proxy_headers=False) as url:  # as `rlhf label serve` runs it
        assert [login(url, "lab0", "wrong password").status_code for _ in range(3)] == [401, 401, 401]
        refused = login(url, "lab0", PASSWORD)  # the right password, but the account is locked for the window
        assert refused.status_code == 429 and "too many failed logins for this account" in refused.text
        assert 0 < int(refused.headers["Retry-After"]) <= 600
        assert login(url, "lab1", PASSWORD).status_code == 303  # other users' failures do not block lab1
        # a success clears the account's failures: 2 + success + 2 never reach the limit of 3
        for _ in range(2):
            assert login(url, "lab1", "wrong password").status_code == 401
        assert login(url, "lab1", PASSWORD).status_code == 303
        assert [login(url, "lab1", "wrong password").status_code for _ in range(2)] == [401, 401]
        # per address: 10 failures from 127.0.0.2 over ten names lock that address, for every account ...
        assert [login(url, f"guess{i}", "x' OR '1'='1", "127.0.0.2").status_code for i in range(10)] == [401] * 10
        blocked = login(url, "lab2", PASSWORD, "127.0.0.2")
        assert blocked.status_code == 429 and "too many failed logins from your address" in blocked.text
        assert (
            login(url, "lab2", PASSWORD, "127.0.0.1").status_code == 303
        )  # ... but not from 127.0.0.1 (7 failures < 10)
        # X-Forwarded-For is ignored: naming the locked address from 127.0.0.1 changes nothing (uvicorn's default
        # would trust 127.0.0.1's header and refuse this login as 127.0.0.2's)
        assert login(url, "lab2", PASSWORD, "127.0.0.1", headers={"X-Forwarded-For": "127.0.0.2"}).status_code == 303
