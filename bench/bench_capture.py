"""Last-token features at every decoder layer: the fused capture hook vs output_hidden_states=True.

    pytest bench/bench_capture.py --benchmark-only --benchmark-group-by=param:seq_len
    python bench/bench_capture.py [--seq-lens 128 512 1024] [--batch 4] [--device cpu]

Variants, each producing ``[layers, batch, hidden]`` last-token features:

* ``hidden_states``: the causal LM with ``output_hidden_states=True`` (the usual way), then a gather.
* ``hidden_states (backbone)``: the same on the bare decoder (no LM head, so no logits).
* ``capture``: ``LastTokenCapture`` on the causal LM with early stop after the last layer.
* ``capture (no early stop)``: the hook alone; the forward still runs the final norm and LM head.

Script mode times the variants in interleaved rounds (median ms) and measures each one's peak
memory in a fresh subprocess: on the CPU the resident-set high-water mark above the level after
loading the model (glibc's mmap threshold pinned so freed tensors go back to the OS at once), on a
GPU ``torch.cuda.max_memory_allocated`` above the allocated level before the forward. It also
prints the bytes each approach must hold by construction: hidden states ``(layers + 1) × batch ×
seq × hidden``, logits ``batch × seq × vocab``, the capture buffer ``layers × batch × hidden``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "python")]
from mlr.modules import decoder_layers  # noqa: E402

from mlr_kernels.capture import LastTokenCapture, last_token_index  # noqa: E402

# A small Llama with a real-size vocabulary: 6 layers x 256 hidden, 32k tokens.
CONFIG = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)


def build(device: str, seq_len: int, batch: int):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).to(device).eval()
    ids = torch.randint(0, CONFIG["vocab_size"], (batch, seq_len), device=device)
    mask = torch.ones_like(ids)
    mask[1::2, seq_len // 2:] = 0  # half the rows right-padded to half length
    return model, ids, mask


def variants(model, ids, mask) -> dict[str, Callable[[], torch.Tensor]]:
    layers = decoder_layers(model)
    every = list(range(len(layers)))
    rows, last = torch.arange(ids.shape[0], device=ids.device), last_token_index(mask)

    def from_hidden_states(forward) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            hidden = forward(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                             use_cache=False).hidden_states
            return torch.stack([hidden[i + 1][rows, last] for i in every])
        return run

    def capture(stop_early: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with LastTokenCapture(layers, every, attention_mask=mask,
                                  stop_early=stop_early) as cap:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            return cap.buffer
        return run

    return {
        "hidden_states": from_hidden_states(model),
        "hidden_states (backbone)": from_hidden_states(model.model),
        "capture": capture(True),
        "capture (no early stop)": capture(False),
    }


# ----------------------------------------------------------------- pytest-benchmark suite


@pytest.mark.parametrize("seq_len", [128, 512])
@pytest.mark.parametrize("variant", ["hidden_states", "hidden_states (backbone)", "capture",
                                     "capture (no early stop)"])
def test_features(benchmark, variant, seq_len):
    model, ids, mask = build("cpu", seq_len, batch=2)
    run = variants(model, ids, mask)[variant]
    with torch.inference_mode():
        benchmark(run)


# ----------------------------------------------------------------- script mode


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_child(variant: str, seq_len: int, batch: int, device: str) -> None:
    """Run one variant once; print its peak memory above the loaded-model level, in MiB."""
    model, ids, mask = build(device, seq_len, batch)
    run = variants(model, ids, mask)[variant]
    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
            before = _rss_kib("VmRSS")
            run()
            peak = (_rss_kib("VmHWM") - before) * 1024
    print(json.dumps({"peak_mib": peak / 2**20}))


def peak_memory(variant: str, seq_len: int, batch: int, device: str) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--seq-lens", str(seq_len),
                          "--batch", str(batch), "--device", device],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def median_ms(runs: dict[str, Callable[[], torch.Tensor]], rounds: int,
              device: str) -> dict[str, float]:
    """Interleaved rounds (every variant once per round) after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run()
        for _ in range(rounds):
            for name, run in runs.items():
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def check_equal(runs: dict[str, Callable[[], torch.Tensor]]) -> None:
    with torch.inference_mode():
        results = {name: run() for name, run in runs.items()}
    reference = results["hidden_states (backbone)"]
    for name, result in results.items():  # the last layer: hidden_states has the final norm on it
        if not torch.equal(result[:-1], reference[:-1]):
            raise AssertionError(f"{name} differs from output_hidden_states")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_memory_child(args.child, args.seq_lens[0], args.batch, args.device)
        return
    layers, hidden, vocab = (CONFIG[k] for k in ("num_hidden_layers", "hidden_size", "vocab_size"))
    print(f"Llama {layers} layers x {hidden} hidden, vocab {vocab}; batch {args.batch}; "
          f"{args.device}, {torch.get_num_threads()} threads; median of {args.rounds} rounds")
    print(f"capture buffer: {layers * args.batch * hidden * 4 / 2**10:.0f} KiB at every length")
    print("| seq | variant | ms | vs hidden_states | peak MiB | vs hidden_states "
          "| held by construction MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for seq_len in args.seq_lens:
        model, ids, mask = build(args.device, seq_len, args.batch)
        runs = variants(model, ids, mask)
        check_equal(runs)
        times = median_ms(runs, args.rounds, args.device)
        del model, ids, mask, runs
        hidden_bytes = (layers + 1) * args.batch * seq_len * hidden * 4
        logits_bytes = args.batch * seq_len * vocab * 4
        held = {"hidden_states": hidden_bytes + logits_bytes,
                "hidden_states (backbone)": hidden_bytes,
                "capture": layers * args.batch * hidden * 4,
                "capture (no early stop)": logits_bytes}
        peaks = {name: peak_memory(name, seq_len, args.batch, args.device) for name in times}
        for name in times:
            print(f"| {seq_len} | {name} | {times[name]:.1f} | "
                  f"{times[name] / times['hidden_states']:.2f} | {peaks[name]:.0f} | "
                  f"{peaks[name] / peaks['hidden_states']:.2f} | {held[name] / 2**20:.1f} |")


if __name__ == "__main__":
    main()
