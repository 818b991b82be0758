"""How far a share measured on few prompts can be trusted, said rather than hidden.

An accuracy, an attack success rate or an over-refusal rate measured on ``n`` prompts is a binomial
share; its 95 % interval (normal approximation) is ``± 1.96 * sqrt(p (1 - p) / n)``, widest at
p = 0.5. Below ``WARN_HALF_WIDTH`` of that worst case the numbers are printed without comment.
"""

from __future__ import annotations

import math
import sys

WARN_HALF_WIDTH = 0.1  # ± 0.1 at p = 0.5 needs 97 prompts


def half_width(n: int) -> float:
    """Half-width of the 95 % interval of a share measured on ``n`` (> 0) items, at its widest."""
    return 1.96 * math.sqrt(0.25 / n)


def few_prompts_note(measure: str, n: int, detail: str = "") -> str | None:
    """A one-line note when ``measure`` (a share) rests on ``n`` prompts, too few for a firm number
    (``detail``: what they are, e.g. "6 harmful, 6 benign"), else ``None``."""
    if n == 0 or half_width(n) <= WARN_HALF_WIDTH:
        return None
    what = f"{n} prompts ({detail})" if detail else f"{n} prompts"
    return (f"{measure} rests on {what}: uncertain by up to ±{half_width(n):.2f} (95 % interval); "
            "use more prompts for a firmer number")


def warn(message: str | None) -> None:
    """Print ``message`` (if any) as ``mlr: warning: ...`` on stderr."""
    if message:
        print(f"mlr: warning: {message}", file=sys.stderr, flush=True)
