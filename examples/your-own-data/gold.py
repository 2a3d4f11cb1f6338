"""A programmatic reward for the worked example in docs/your-own-data.md: task.gold: python:gold:mentions_topic."""


def mentions_topic(prompts: list[str], responses: list[str]) -> list[float]:
    """1 when the response names the prompt's topic, plus 0.5 for a short one (4 to 20 words), else less."""
    scores = []
    for prompt, response in zip(prompts, responses):
        topic = prompt.removeprefix("Give me one short tip about ").removesuffix(".")
        words = len(response.split())
        scores.append(float(topic.lower() in response.lower()) + (0.5 if 4 <= words <= 20 else 0.0))
    return scores
