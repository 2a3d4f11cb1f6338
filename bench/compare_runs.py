"""Compare two run directories: summary.json (all figures except timing keys), ppo/metrics.jsonl (except time
fields), eval/samples.jsonl, bon/candidates.jsonl, collect/comparisons.jsonl. Exact equality (floats included)."""

import json
import sys
from pathlib import Path

TIME_WORDS = ("seconds", "time", "wall", "cpu_")


def is_time_key(key: str) -> bool:
    return any(w in key for w in TIME_WORDS)


def strip_time(x):
    if isinstance(x, dict):
        return {k: strip_time(v) for k, v in x.items() if not is_time_key(k)}
    if isinstance(x, list):
        return [strip_time(v) for v in x]
    return x


def diff(a, b, path="") -> list[str]:
    if type(a) is not type(b):
        return [f"{path}: type {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, dict):
        out = [f"{path}/{k}: only in {'base' if k in a else 'new'}" for k in sorted(set(a) ^ set(b))]
        if list(k for k in a if k in b) != list(k for k in b if k in a):
            out.append(f"{path}: key order differs")
        for k in a:
            if k in b:
                out += diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list):
        out = [f"{path}: length {len(a)} != {len(b)}"] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff(x, y, f"{path}[{i}]")
        return out
    if a != b and not (isinstance(a, float) and a != a and b != b):  # NaN == NaN here
        return [f"{path}: {a!r} != {b!r}"]
    return []


def jsonl(p: Path):
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def main(base: str, new: str) -> int:
    base, new = Path(base), Path(new)
    total = 0
    for rel, load in [
        ("summary.json", lambda p: json.loads(p.read_text())),
        ("ppo/metrics.jsonl", jsonl),
        ("eval/samples.jsonl", jsonl),
        ("bon/candidates.jsonl", jsonl),
        ("collect/comparisons.jsonl", jsonl),
    ]:
        a, b = strip_time(load(base / rel)), strip_time(load(new / rel))
        problems = diff(a, b)
        n = len(a) if isinstance(a, list) else len(json.dumps(a))
        print(
            f"{rel}: {'IDENTICAL' if not problems else f'{len(problems)} DIFFERENCES'} ({n} {'rows' if isinstance(a, list) else 'chars'})"
        )
        for p in problems[:20]:
            print("   ", p)
        total += len(problems)
    dropped = sorted(
        {k for row in jsonl(base / "ppo/metrics.jsonl") for k in row if is_time_key(k)}
        | {k for k in json.loads((base / "summary.json").read_text()) if is_time_key(k)}
    )
    print("time keys left out:", dropped)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
