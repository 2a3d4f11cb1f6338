"""Score responses with the exported reward model using plain transformers (docs/your-own-data.md)."""

import json
import sys
from pathlib import Path

from transformers import pipeline

folder = Path(sys.argv[1] if len(sys.argv) > 1 else "exported/tips-reward")
# the normalisation's constant, when the architecture's head cannot hold it (docs/export.md)
offset = json.loads((folder / "config.json").read_text()).get("rlhf_score_offset", 0.0)
score = pipeline("text-classification", model=str(folder), function_to_apply="none", device="cpu")
prompt = "Give me one short tip about sleep."
for response in [" Keep sleep simple: pick one habit and repeat it daily.", " It depends."]:
    print(f"{score({'text': prompt, 'text_pair': response})['score'] + offset:+.3f}  {response!r}")
