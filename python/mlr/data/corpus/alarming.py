"""Alarming-but-safe requests: harmless actions named with violent or criminal words.

Each action of ``ALARMING_TABLE`` appears in ``FRAMES_PER_ACTION`` of the security set's neutral
frames. Unlike the security twins, whole actions are held out (about a third, by a stable hash of
the action), so the held-out prompts ask about things the alignment data never mentions: a model
that over-refuses them refuses alarming words, not harm.
"""

from __future__ import annotations

from functools import lru_cache

from mlr.data.corpus.alarming_table import ALARMING_TABLE
from mlr.data.corpus.responses import HELPFUL_OPENINGS
from mlr.data.corpus.security_table import REQUEST_FRAMES
from mlr.data.corpus.splits import Split, hash_order, in_split, pick, stable_hash

FRAMES_PER_ACTION = 4
HELDOUT_EVERY = 3  # an action is held out when its hash is divisible by this


@lru_cache(maxsize=1)
def _all_requests() -> tuple[tuple[str, str, Split], ...]:
    """(prompt, helpful answer, split) for every action and frame, in a fixed order."""
    rows = []
    for actions in ALARMING_TABLE.values():
        for action, gist in actions:
            split: Split = ("heldout" if stable_hash(f"alarming|{action}") % HELDOUT_EVERY == 0
                            else "train")
            for frame in hash_order(f"alarming|{action}", REQUEST_FRAMES)[:FRAMES_PER_ACTION]:
                prompt = frame.format(action=action)
                answer = pick(f"helpful|{prompt}", HELPFUL_OPENINGS).format(gist=gist)
                rows.append((prompt, answer, split))
    return tuple(rows)


def alarming_prompts(split: str = "all") -> list[str]:
    """The alarming-but-safe requests of ``split`` ("all", "train" or "heldout")."""
    return [prompt for prompt, _, item_split in _all_requests() if in_split(item_split, split)]


def alarming_examples(split: str = "all") -> list[dict]:
    """Chat examples answering each alarming-but-safe request of ``split`` helpfully."""
    return [{"messages": [{"role": "user", "content": prompt},
                          {"role": "assistant", "content": answer}]}
            for prompt, answer, item_split in _all_requests() if in_split(item_split, split)]
