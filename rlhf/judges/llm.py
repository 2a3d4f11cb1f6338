"""An LLM judge over any OpenAI-compatible chat-completions endpoint (POST {base_url}/chat/completions).

The prompt follows the human-evaluation instructions of Stiennon et al. 2020 (App. C) and the GPT-4 judge of
Kirk et al. 2024: judge accuracy, coverage and coherence, then name the better response on a last line
"Preferred: A", "Preferred: B" or "Preferred: Tie". An answer without such a line is "unparseable".
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

from rlhf.config import LLMJudgeConfig
from rlhf.judges.verdicts import Verdict

SYSTEM_PROMPT = (
    "You are a careful evaluator of summaries and assistant responses. You compare two responses to the same "
    "input and say which one is better."
)
USER_TEMPLATE = """Here is an input and two candidate responses to it.

### Input
{prompt}

### Response A
{a}

### Response B
{b}

Judge the two responses on:
- accuracy: does it state only what is true of the input, without made-up details?
- coverage: does it include the information that matters most?
- coherence: is it clear, readable and well organised on its own?
Do not prefer a response for being longer, and do not let the order of the responses matter.
Explain your reasoning in at most three sentences. Then end with one line that is exactly
"Preferred: A", "Preferred: B" or "Preferred: Tie"."""
ANSWER_LINE = re.compile(r"preferred\s*:\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


def judge_messages(prompt: str, a: str, b: str) -> list[dict[str, str]]:
    """The chat messages that ask the judge to compare response A (shown first) with response B."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt, a=a, b=b)},
    ]


def parse_judge_answer(text: str) -> str:
    """ "a", "b" or "tie" from the last "Preferred: ..." line of the judge's answer; "unparseable" without one."""
    matches = ANSWER_LINE.findall(text)
    return matches[-1].lower() if matches else "unparseable"


class LLMJudge:
    """Sends one chat-completions request per comparison and reads the verdict from the answer text."""

    def __init__(self, config: LLMJudgeConfig, name: str = ""):
        if not config.model:
            raise ValueError("LLMJudgeConfig.model: expected the name of the judge model, got ''")
        if not config.base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLMJudgeConfig.base_url: expected an http:// or https:// URL, got {config.base_url!r}")
        self.config = config
        self.name = name or f"llm:{config.model}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self.config.api_key or os.environ.get(self.config.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The text of the first choice of a chat-completions answer; a clear error for HTTP or shape errors."""
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        request = urllib.request.Request(url, json.dumps(body).encode("utf-8"), self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_seconds) as response:
                payload = response.read().decode("utf-8")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:200]
            raise RuntimeError(f"{url}: HTTP {error.code} from the judge endpoint: {detail}") from error
        except urllib.error.URLError as error:
            raise RuntimeError(f"{url}: could not reach the judge endpoint ({error.reason})") from error
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
            raise RuntimeError(
                f"{url}: expected a chat-completions JSON answer with choices[0].message.content, got {payload[:200]!r}"
            ) from error
        if not isinstance(content, str):
            raise RuntimeError(f"{url}: expected choices[0].message.content to be a string, got {content!r}")
        return content

    def compare(self, prompt: str, a: str, b: str) -> Verdict:
        answer = self.complete(judge_messages(prompt, a, b))
        return Verdict(parse_judge_answer(answer), answer)
