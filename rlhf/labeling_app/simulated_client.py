"""A simulated labeler that works through the app over HTTP like a person would: log in, fetch the next
query, answer it with a `Labeler` (e.g. rlhf.labelers.simulated.SimulatedLabeler; Likert queries with its
`rate`), submit the form.
Used to rehearse a collection round end to end without people, and by the load benchmark."""

from __future__ import annotations

import time
from typing import Any

import httpx

from rlhf.data.records import Comparison
from rlhf.labelers.base import Labeler
from rlhf.labeling_app.tables import LIKERT_AXES


def form_from_comparison(comparison: Comparison) -> dict[str, str]:
    """Form fields for an answer given in the order the responses were shown (positions = indices)."""
    if comparison.kind == "ranking":
        return {f"rank_{position}": str(rank + 1) for position, rank in enumerate(comparison.ranks or [])}
    fields = {"choice": str(comparison.best)}
    if comparison.kind == "pairwise":
        fields["confidence"] = str(comparison.confidence or 5)
    return fields


class AppLabelerClient:
    """One account's HTTP session with the app."""

    def __init__(self, base_url: str, name: str, password: str, timeout: float = 60.0):
        self.http = httpx.Client(base_url=base_url, timeout=timeout, follow_redirects=False)
        self.name = name
        csrf = self.http.get("/api/session").json()["csrf"]
        response = self.http.post("/login", data={"name": name, "password": password, "csrf": csrf})
        if response.status_code != 303:
            raise PermissionError(f"login of {name!r} failed with HTTP {response.status_code}")
        self.csrf = self.http.get("/api/session").json()["csrf"]

    def next_query(self) -> dict[str, Any]:
        response = self.http.get("/api/next")
        response.raise_for_status()
        return response.json()

    def submit(self, token: str, fields: dict[str, str], instructions_version: int = 0) -> httpx.Response:
        data = {**fields, "token": token, "csrf": self.csrf, "instructions_version": str(instructions_version)}
        return self.http.post("/label/submit", data=data)

    def close(self) -> None:
        self.http.close()


def label_through_app(
    client: AppLabelerClient, labeler: Labeler, max_queries: int | None = None, deadline: float | None = None
) -> list[str]:
    """Answer queries until there is no work, ``max_queries`` are done or ``deadline`` (time.monotonic) passes;
    returns the tokens of the accepted submissions (HTTP 303 back to /label)."""
    accepted: list[str] = []
    while (max_queries is None or len(accepted) < max_queries) and (deadline is None or time.monotonic() < deadline):
        query = client.next_query()
        if query["status"] != "ok":
            break
        if query["kind"] == "likert":
            if not hasattr(labeler, "rate"):
                raise ValueError(f"labeler {labeler.name!r} cannot answer likert queries (it has no `rate`)")
            ratings = labeler.rate(query["prompt"], query["responses"][0], LIKERT_AXES)
            fields = {axis: str(value) for axis, value in ratings.items()}
        else:
            fields = form_from_comparison(labeler.label(query["prompt"], list(query["responses"]), query["kind"]))
        response = client.submit(query["token"], fields, query["instructions_version"])
        if response.status_code != 303:
            raise RuntimeError(f"{client.name}: submit refused with HTTP {response.status_code}: {response.text[:200]}")
        accepted.append(query["token"])
    return accepted
