"""Tests for rlhf.judges.llm against a stub OpenAI-compatible server on 127.0.0.1 (no network)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlhf.config import LLMJudgeConfig
from rlhf.judges import judge_pairs, summarize_judgements
from rlhf.judges.llm import LLMJudge, judge_messages, parse_judge_answer


class StubChatServer(BaseHTTPRequestHandler):
    """Answers chat completions like a judge that prefers the response containing "GOOD", whichever position
    it is in; an input containing "CONFUSE" gets an answer without a verdict line, "BREAK" gets HTTP 500."""

    requests: list[dict] = []

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubChatServer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        user = body["messages"][-1]["content"]
        if "BREAK" in user:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        response_a = user.split("### Response A")[1].split("### Response B")[0]
        if "CONFUSE" in user:
            answer = "Both have merits and I cannot decide."
        elif "GOOD" in response_a:
            answer = "A is accurate and covers the main point.\nPreferred: A"
        elif "GOOD" in user:
            answer = "B covers more.\nPreferred: **B**"
        else:
            answer = "They are equally weak.\nPreferred: Tie"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def stub_url() -> Iterator[str]:
    StubChatServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_parse_judge_answer() -> None:
    assert parse_judge_answer("reasons...\nPreferred: A") == "a"
    assert parse_judge_answer("Preferred: b") == "b"
    assert parse_judge_answer("Preferred: **Tie**") == "tie"
    # the last verdict line counts
    assert parse_judge_answer("Preferred: A ... on reflection\nPreferred: B") == "b"
    assert parse_judge_answer("I prefer A") == "unparseable"
    assert parse_judge_answer("") == "unparseable"


def test_prompt_names_the_criteria_and_both_responses() -> None:
    user = judge_messages("POST", "first", "second")[-1]["content"]
    for word in ("accuracy", "coverage", "coherence", "POST", "first", "second", "Preferred: A"):
        assert word in user
    assert user.index("first") < user.index("second")


def test_llm_judge_against_stub_server(stub_url: str) -> None:
    judge = LLMJudge(LLMJudgeConfig(base_url=stub_url, model="stub-judge", api_key="test-key"))
    assert judge.name == "llm:stub-judge"
    verdict = judge.compare("post", "a GOOD summary", "a weak one")
    assert verdict.outcome == "a" and "Preferred: A" in verdict.raw
    assert judge.compare("post", "a weak one", "a GOOD summary").outcome == "b"
    assert judge.compare("post", "meh", "also meh").outcome == "tie"
    assert judge.compare("CONFUSE", "x", "y").outcome == "unparseable"
    request = StubChatServer.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer test-key"
    assert request["body"]["model"] == "stub-judge" and request["body"]["temperature"] == 0.0


def test_llm_judge_in_both_orders_with_unparseable_items(stub_url: str) -> None:
    judge = LLMJudge(LLMJudgeConfig(base_url=stub_url, model="stub-judge", api_key_env="RLHF_TEST_UNSET_KEY"))
    items = [("post 1", "GOOD one", "bad one"), ("post 2", "bad two", "GOOD two"), ("CONFUSE me", "x", "y")]
    judged = judge_pairs(judge, items, position="both")
    assert len(StubChatServer.requests) == 6  # two orders per item
    assert StubChatServer.requests[0]["auth"] is None  # no key configured: no header
    assert [item.outcome_for_a for item in judged] == [1.0, 0.0, None]
    summary = summarize_judgements(judged, n_resamples=200)
    assert summary["n_unparseable"] == 1 and summary["win_rate"]["n"] == 2
    assert summary["position_consistency_rate"] == 1.0


def test_llm_judge_errors_are_clear(stub_url: str) -> None:
    judge = LLMJudge(LLMJudgeConfig(base_url=stub_url, model="stub-judge"))
    with pytest.raises(RuntimeError, match="HTTP 500"):
        judge.compare("BREAK", "x", "y")
    unreachable = LLMJudge(LLMJudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout_seconds=5))
    with pytest.raises(RuntimeError, match="could not reach"):
        unreachable.compare("p", "x", "y")
    with pytest.raises(ValueError, match="model"):
        LLMJudge(LLMJudgeConfig(base_url=stub_url))
    with pytest.raises(ValueError, match="base_url"):
        LLMJudge(LLMJudgeConfig(base_url="127.0.0.1:8000", model="m"))
