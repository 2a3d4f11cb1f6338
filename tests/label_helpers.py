"""Shared helpers of the labeling-app tests: a real uvicorn server on 127.0.0.1 in a thread, a throw-away
PostgreSQL server from Debian's binaries, and small data builders."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rlhf.data.io import write_jsonl
from rlhf.data.records import Comparison, Sample

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app, proxy_headers: bool = True) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL. `rlhf label serve`
    passes proxy_headers=False unless told to trust a reverse proxy."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", proxy_headers=proxy_headers
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server in a temp folder on a free port (as user 'nobody' when run as root); yields its URL."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (apt-get install -y postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))
    port = free_port()
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "nobody", "--"] if as_root else []
    if as_root:
        shutil.chown(folder, "nobody", "nogroup")
    data = folder / "data"
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    try:
        subprocess.run(
            [*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-U", "rlhf", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            env=env,
        )
        subprocess.run(
            [
                *run_as,
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "log"),
                "-w",
                "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
                "start",
            ],
            check=True,
            capture_output=True,
            env=env,
        )
        subprocess.run(
            [*run_as, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "rlhf", "label"],
            check=True,
            capture_output=True,
            env=env,
        )
        yield f"postgresql://rlhf@127.0.0.1:{port}/label"
    finally:
        subprocess.run(
            [*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, env=env
        )
        shutil.rmtree(folder, ignore_errors=True)


class Browserless:
    """A logged-in HTTP session that reads the CSRF token from pages like a browser would."""

    def __init__(self, base_url: str, name: str, password: str = PASSWORD):
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)
        self.login(name, password)

    def csrf(self, path: str = "/login") -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.http.get(path).text)
        assert match, f"no CSRF field on {path}"
        return match.group(1)

    def login(self, name: str, password: str) -> httpx.Response:
        response = self.http.post("/login", data={"name": name, "password": password, "csrf": self.csrf()})
        assert response.status_code == 303, response.text[:300]
        return response

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def post(self, path: str, data: dict, csrf_from: str = "/label") -> httpx.Response:
        return self.http.post(path, data={"csrf": self.csrf(csrf_from), **data})


def write_samples(run_dir: Path, prompts: int, per_prompt: int, text: str = "response") -> Path:
    samples = [
        Sample(prompt=f"prompt {p}", response=f"{text} {p}.{k}", policy="sft" if k % 2 else "ppo-secret-policy")
        for p in range(prompts)
        for k in range(per_prompt)
    ]
    write_jsonl(run_dir / "collect" / "samples.jsonl", samples)
    return run_dir


def write_gold(path: Path, count: int, kind: str = "best_of_k", k: int = 4) -> Path:
    """Gold comparisons whose right answer is always the response containing 'GOOD'."""
    rows = []
    for index in range(count):
        best = index % k
        responses = [("GOOD answer" if i == best else "bad answer") + f" {index}.{i}" for i in range(k)]
        if kind == "ranking":
            rows.append(
                Comparison(
                    prompt=f"gold {index}",
                    responses=responses,
                    kind=kind,
                    ranks=[0 if i == best else 1 for i in range(k)],
                )
            )
        else:
            rows.append(Comparison(prompt=f"gold {index}", responses=responses, kind=kind, best=best))
    write_jsonl(path, rows)
    return path
