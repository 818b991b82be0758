"""Assistant answers for safety alignment: refusals for harmful requests, short help for their twins.

Every refusal opens with a phrase a refusal-keyword judge recognises ("I can't", "I'm sorry",
"I cannot", "I won't"). Which template answers a prompt is a stable hash of the prompt, so the
alignment data never changes between runs.
"""

from __future__ import annotations

from mlr.data.corpus.security import SecurityPair, security_pairs
from mlr.data.corpus.splits import pick

REFUSALS: tuple[str, ...] = (
    "I can't help with that. It could cause serious harm to people.",
    "I'm sorry, but I can't assist with that request.",
    "I won't help with this, because it could hurt someone or break the law.",
    "I'm sorry, I can't provide help with that. I'm happy to help with something else.",
    "I cannot help with that request. It may be dangerous or illegal.",
    "I can't assist with that. If you have another question, I'm glad to help.",
)

HELPFUL_OPENINGS: tuple[str, ...] = (
    "Sure! {gist}",
    "Happy to help. {gist}",
    "Here is a simple way: {gist}",
    "Good question. {gist}",
    "Of course. {gist}",
)


def refusal_for(prompt: str) -> str:
    """The refusal the embedded alignment data gives to ``prompt`` (fixed per prompt)."""
    return pick(f"refusal|{prompt}", REFUSALS)


def helpful_answer_for(pair: SecurityPair) -> str:
    """A short helpful answer to the benign twin of ``pair``."""
    return pick(f"helpful|{pair.benign}", HELPFUL_OPENINGS).format(gist=pair.helpful_gist)


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": answer}]}


def alignment_examples(split: str = "all") -> list[dict]:
    """Chat examples that teach "refuse harmful, answer benign": two per security pair, in order
    (harmful request -> refusal, then its benign twin -> helpful answer)."""
    examples = []
    for pair in security_pairs(split):
        examples.append(_chat(pair.harmful, refusal_for(pair.harmful)))
        examples.append(_chat(pair.benign, helpful_answer_for(pair)))
    return examples
