"""The security proxy: a logistic-regression probe per layer on last-token features.

Fit: features standardized with the training mean and std, L2-regularized logistic loss minimized
by full-batch L-BFGS in float64 from a zero start, so the fit has no randomness at all; the
standardization is then folded into the weight so the stored probe reads raw features.

Layer choice: the *shallowest* layer whose held-out log-loss is within ``LAYER_TOLERANCE`` nats of
the best layer's. Accuracy saturates (a real model separates a prompt set at 0.94-1.00 at nearly
every layer, so the old "best accuracy, then deeper" rule picked the last layer by a tie); the
log-loss keeps ranking layers after accuracy has saturated, and among layers that carry the
feature about equally well the shallowest is the cheapest to map and sits where the feature forms.

When the held-out sets separate perfectly already at layer 0 (``wording_note``), one layer of
context cannot have read the request's intent: the two sets differ in wording or style, and a map
of such a probe measures nothing about safety. The remedy is the paper's construction, benign
twins a few words apart from each harmful prompt (the embedded set is built that way).

When no layer's probe ranks the held-out prompts better than chance (``chance_note``: AUC at most
0.5 everywhere, as on a few prompts that the model cannot tell apart), a layer is still chosen by
the rule above, but it carries no security feature; the commands say so instead of presenting it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

L2_PENALTY = 1e-2
MAX_ITERATIONS = 200
LAYER_TOLERANCE = 0.05  # nats of held-out log-loss: layers this close to the best count as tied


@dataclass(frozen=True)
class LinearProbe:
    """``logit = features @ weight + bias``; positive means harmful."""

    weight: torch.Tensor  # float32 [hidden]
    bias: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight + self.bias

    def to_dict(self) -> dict:
        return {"weight": self.weight.tolist(), "bias": self.bias}

    @classmethod
    def from_dict(cls, data: dict) -> LinearProbe:
        return cls(torch.tensor(data["weight"], dtype=torch.float32), float(data["bias"]))


@dataclass(frozen=True)
class LayerScore:
    """How well a probe trained on one layer's last-token features separates the held-out
    prompts: ``accuracy`` and ``auc`` in [0, 1], ``log_loss`` in nats."""

    layer: int
    accuracy: float
    auc: float
    log_loss: float  # mean held-out binary cross-entropy, nats


@dataclass(frozen=True)
class ProbeResult:
    """The probe stage's outcome (``probe.json``): every layer's held-out scores, the layer chosen
    (0-based) and the probe trained there, whose verdict the robustness map and search perturb."""

    scores: list[LayerScore]
    layer: int
    probe: LinearProbe

    @property
    def note(self) -> str | None:
        """``wording_note`` of these scores."""
        return wording_note(self.scores)

    @property
    def chance_note(self) -> str | None:
        """``chance_note`` of these scores."""
        return chance_note(self.scores)

    def to_json(self, config: dict) -> dict:
        """The ``probe.json`` record; ``config`` says what produced it (model, data, options)."""
        return {
            "layers": [asdict(s) for s in self.scores],
            "layer": self.layer,
            "note": self.note,
            "probe": self.probe.to_dict(),
            "config": config,
        }

    @classmethod
    def from_json(cls, data: dict) -> ProbeResult:
        # probe.json files written before the log-loss was recorded still load (mlr eval --probe)
        scores = [LayerScore(s["layer"], s["accuracy"], s["auc"], s.get("log_loss", math.nan))
                  for s in data["layers"]]
        return cls(scores, data["layer"], LinearProbe.from_dict(data["probe"]))


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, l2: float = L2_PENALTY,
                 max_iter: int = MAX_ITERATIONS) -> LinearProbe:
    """Logistic regression of ``labels`` (0/1) on ``features`` ``[rows, hidden]``."""
    x = features.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    y = labels.double()
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, y)
        loss = loss + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    raw_weight = weight.detach() / std
    raw_bias = bias.detach() - (raw_weight * mean).sum()
    return LinearProbe(raw_weight.float(), float(raw_bias))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return ((logits > 0).long() == labels).double().mean().item()


def log_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row binary cross-entropy of the probe's verdict (nats, float64 ``[rows]``)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits.double(), labels.double(), reduction="none")


def signed_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit times ±1 (+1 harmful): positive when the verdict is right, larger when surer."""
    return logits * (2 * labels - 1).to(logits.dtype)


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve from ranks (Mann–Whitney U); tied scores share their mean rank."""
    scores = scores.double()
    positives = labels.bool()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    order = torch.argsort(scores)
    _, inverse, counts = torch.unique_consecutive(scores[order], return_inverse=True,
                                                  return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # 1-based mean rank of each tie group
    ranks = torch.empty_like(scores)
    ranks[order] = mean_rank[inverse]
    u = ranks[positives].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def choose_layer(scores: list[LayerScore], tolerance: float = LAYER_TOLERANCE) -> int:
    """The shallowest layer whose held-out log-loss is at most the best one's + ``tolerance``."""
    best = min(s.log_loss for s in scores)
    return min(s.layer for s in scores if s.log_loss <= best + tolerance)


def wording_note(scores: list[LayerScore]) -> str | None:
    """One line when the held-out sets separate perfectly at layer 0, else ``None``."""
    first = next((s for s in scores if s.layer == 0), None)
    if first is None or first.accuracy < 1.0:
        return None
    return ("harmful and benign prompts separate perfectly already at layer 0 (held-out accuracy "
            "1.000): they differ in wording, not intent, so the probe reads style, not safety; "
            "give benign twins a few words apart from each harmful prompt (the paper's "
            "construction; the embedded set, used when --harmful and --benign are omitted, "
            "is built that way)")


def chance_note(scores: list[LayerScore]) -> str | None:
    """One line when no layer's probe does better than chance on the held-out prompts (its AUC
    is at most 0.5 at every layer), else ``None``."""
    best = max(scores, key=lambda s: s.auc)
    if best.auc > 0.5:
        return None
    return (f"no layer's probe does better than chance on the held-out prompts (best AUC "
            f"{best.auc:.3f}, at layer {best.layer}, accuracy {best.accuracy:.3f}): the chosen "
            "layer carries no security feature, and a robustness map of its probe measures "
            "noise; use more prompts, with benign twins a few words apart from each harmful one")


def train_probes(train_features: torch.Tensor, train_labels: torch.Tensor,
                 heldout_features: torch.Tensor, heldout_labels: torch.Tensor,
                 layers: list[int], layer: int | None = None,
                 tolerance: float = LAYER_TOLERANCE) -> ProbeResult:
    """Fit one probe per layer (``*_features`` are ``[len(layers), rows, hidden]``), score each on
    the held-out rows, and keep the probe of ``layer`` (or of ``choose_layer``'s when ``None``)."""
    probes, scores = {}, []
    for row, index in enumerate(layers):
        probe = fit_logistic(train_features[row], train_labels)
        logits = probe.logits(heldout_features[row])
        probes[index] = probe
        scores.append(LayerScore(index, accuracy(logits, heldout_labels),
                                 auc(logits, heldout_labels),
                                 log_loss(logits, heldout_labels).mean().item()))
    chosen = choose_layer(scores, tolerance) if layer is None else layer
    if chosen not in probes:
        raise ValueError(f"layer {chosen} was not probed (probed: {layers})")
    return ProbeResult(scores, chosen, probes[chosen])
