"""``mlr probe|analyze|search`` end to end on a tiny model, output schemas, reuse, and bad input."""

from __future__ import annotations

import json

import pytest
from mlr import cli
from mlr.analysis import pipeline
from mlr.data.security_data import load_security_data
from mlr.modules import MODULE_TYPES
from mlr.sample_size import few_prompts_note
from tiny_models import tiny_llama, word_tokenizer
from torch import nn

HARMFUL = [f"{verb} a {thing} to hurt {who}" for verb in ("build", "make", "hide", "buy")
           for thing in ("bomb", "poison", "weapon") for who in ("people", "them")]
BENIGN = [f"{verb} a {thing} to help {who}" for verb in ("build", "make", "hide", "buy")
          for thing in ("birdhouse", "cake", "garden") for who in ("people", "them")]
INSTRUCTIONS = [{"instruction": "add the numbers", "input": "2 3", "output": "5"},
                {"instruction": "repeat the word", "input": "cake", "output": "cake"}]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "harmful.txt").write_text("\n".join(HARMFUL))
    (tmp_path / "benign.txt").write_text("\n".join(BENIGN))
    (tmp_path / "ift.json").write_text(json.dumps(INSTRUCTIONS))
    return tmp_path


@pytest.fixture
def tiny_loader(monkeypatch):
    """``load_model`` returns a 2-layer Llama with a word-level tokenizer over the test's words."""
    texts = HARMFUL + BENIGN + [" ".join(r.values()) for r in INSTRUCTIONS]
    tokenizer = word_tokenizer(texts)

    def load_model(path, dtype="float32", device="cpu"):
        return tiny_llama(layers=2, vocab=len(tokenizer)), tokenizer

    monkeypatch.setattr("mlr.analysis.session.load_model", load_model)


def run(files, command, *extra):
    args = [command, "--harmful", str(files / "harmful.txt"), "--benign", str(files / "benign.txt"),
            "--out", str(files / "out"), "--batch-size", "8", *extra]
    try:
        return cli.main(args)
    except SystemExit as exit:  # argparse's usage errors end the process, as in a real run
        return exit.code


def test_probe_analyze_search_write_their_outputs(files, tiny_loader, capsys, monkeypatch):
    assert run(files, "search", "--layer", "1", "--analysis-seeds", "2", "--alpha", "0.3") == 0
    out = files / "out"
    probe = json.loads((out / "probe.json").read_text())
    assert probe["layer"] == 1 and [s["layer"] for s in probe["layers"]] == [0, 1]
    assert {"accuracy", "auc", "log_loss"} <= set(probe["layers"][0])
    robustness = json.loads((out / "robustness.json").read_text())
    modules = robustness["modules"]
    assert [(m["layer"], m["type"]) for m in modules] == [(i, t) for i in range(2)
                                                         for t in MODULE_TYPES]
    assert all({"name", "type", "layer", "score", "score_se", "change", "accuracy",
                "seeds"} <= set(m) for m in modules)
    assert all(len(m["seeds"]) == 2 for m in modules)
    assert len({m["score"] for m in modules}) == len(modules)  # continuous: no ties
    assert 0 < robustness["cost"]["fraction_of_naive"] < 1
    comparison = robustness["comparison"]  # the first-order map, computed beside the exact one
    assert comparison["modules"] == len(modules) and -1 <= comparison["spearman_score"] <= 1
    result = json.loads((out / "mods_robust.json").read_text())
    assert set(result["modules"]) <= {m["name"] for m in modules}
    assert 0 <= result["param_fraction"] <= 1 and result["curve"][0]["step"] == 0
    assert result["stop_reason"] in ("tau", "budget", "exhausted") and result["stop_detail"]
    assert all({"score", "accuracy", "param_fraction"} <= set(p) for p in result["curve"])
    for picture in ("robustness.png", "search.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "Mods_Robust:" in printed and "stopped:" in printed and "parameters" in printed

    def no_recompute(*args):
        raise AssertionError("robustness.json should have been reused")

    monkeypatch.setattr(pipeline, "compute_map", no_recompute)
    assert run(files, "search", "--layer", "1", "--analysis-seeds", "2", "--alpha", "0.3",
               "--budget", "0.1") == 0
    assert json.loads((out / "mods_robust.json").read_text())["param_fraction"] <= 0.1


def test_the_probe_and_map_are_reused_by_the_prompts_content_not_their_path(files, tiny_loader,
                                                                            monkeypatch):
    search = ("search", "--layer", "1", "--seeds", "1", "--bootstraps", "0")
    assert run(files, *search) == 0
    (files / "elsewhere").mkdir()
    moved = files / "elsewhere" / "harmful.jsonl"  # the same prompts, another path and format
    moved.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in HARMFUL))

    def no_recompute(*args):
        raise AssertionError("recomputed")

    monkeypatch.setattr(pipeline, "fit_probe", no_recompute)
    monkeypatch.setattr(pipeline, "compute_map", no_recompute)
    assert run(files, *search, "--harmful", str(moved)) == 0
    moved.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in HARMFUL[1:]))
    with pytest.raises(AssertionError, match="recomputed"):  # other prompts: fitted afresh
        run(files, *search, "--harmful", str(moved))


def test_ift_grad_analysis(files, tiny_loader):
    assert run(files, "analyze", "--perturb", "ift-grad", "--ift", str(files / "ift.json"),
               "--analysis-seeds", "1", "--alpha", "0.2", "--layer", "1") == 0
    robustness = json.loads((files / "out" / "robustness.json").read_text())
    assert robustness["perturb"] == "ift-grad" and robustness["cost"]["gradient_passes"] == 1
    assert robustness["comparison"] is None  # first order has no closed form for a gradient step


def test_first_order_map_and_held_out_limit(files, tiny_loader, capsys):
    assert run(files, "analyze", "--method", "first-order", "--layer", "1",
               "--heldout-limit", "8") == 0
    robustness = json.loads((files / "out" / "robustness.json").read_text())
    assert robustness["method"] == "first-order" and robustness["heldout_rows"] == 8
    assert all(m["measured"] and 0 < m["score"] <= 1 for m in robustness["modules"])
    assert "first-order map" in capsys.readouterr().out


def test_sets_that_separate_at_layer_zero_are_said_to_differ_in_wording(files, tiny_loader,
                                                                         capsys):
    # the tiny random model separates these 12 held-out prompts perfectly at layer 0
    assert run(files, "probe") == 0
    assert "differ in wording, not intent" in capsys.readouterr().err
    assert run(files, "analyze", "--analysis-seeds", "1") == 2
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("mlr: error: ")]
    assert len(errors) == 1 and "wording, not intent" in errors[0] and "twins" in errors[0]
    assert not (files / "out" / "robustness.json").exists()


def test_a_probe_at_chance_at_every_layer_is_said_so(files, tiny_loader, capsys):
    # the same prompts on both sides: nothing to tell apart, a held-out AUC of 0.5 at every layer
    (files / "benign.txt").write_text("\n".join(HARMFUL))
    assert run(files, "probe") == 0
    captured = capsys.readouterr()
    assert "probe layer" in captured.out
    assert "mlr: warning: no layer's probe does better than chance" in captured.err
    (files / "benign.txt").write_text("\n".join(BENIGN))  # prompts that differ: no such remark
    assert run(files, "probe") == 0
    assert "better than chance" not in capsys.readouterr().err


def _write(files, name, text):
    (files / name).write_text(text)
    return str(files / name)


@pytest.mark.parametrize("command,extra,message", [
    ("probe", ["--harmful", "{dir}/missing.txt"], "not found"),
    ("probe", ["--benign", "{empty}"], "is empty"),
    ("probe", ["--benign", "{blank}"], "no prompts"),
    ("probe", ["--harmful", "{few}"], "at least 6 harmful prompts"),
    ("probe", ["--harmful", "{csv}"], "no 'goal' column"),
    ("analyze", ["--layer", "7"], "out of range"),
    ("search", ["--tau", "1.5"], "--tau"),
    ("search", ["--budget", "0"], "--budget"),
    ("analyze", ["--analysis-seeds", "0"], "--analysis-seeds"),
    ("analyze", ["--alpha", "-1"], "--alpha"),
    ("analyze", ["--method", "first-order", "--perturb", "ift-grad"], "noise only"),
    ("analyze", ["--heldout-limit", "2"], "--heldout-limit"),
    ("probe", ["--layer-tolerance", "-0.1"], "--layer-tolerance"),
    ("analyze", ["--perturb", "ift-grad", "--ift", "{dir}/missing.json"], "not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tiny_loader, capsys, command,
                                                         extra, message):
    names = {"dir": str(files), "empty": _write(files, "empty.txt", "\n"),
             "blank": _write(files, "blank.json", '["", " "]'),
             "few": _write(files, "few.txt", "\n".join(HARMFUL[:5])),
             "csv": _write(files, "bad.csv", "prompt_text,target\nhello,world\n")}
    extra = [arg.format(**names) for arg in extra]
    assert run(files, command, *extra) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("mlr: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("mlr: error: ") and message in lines[0]
    assert "Traceback" not in err
    assert not (files / "out").exists() or not any((files / "out").iterdir())


def test_unrecognized_model_and_missing_model_dir(files, capsys, monkeypatch, tmp_path):
    assert run(files, "probe", "--model", str(tmp_path / "nowhere")) == 2
    assert "model directory not found" in capsys.readouterr().err
    monkeypatch.setattr("mlr.analysis.session.load_model",
                        lambda *a, **k: (nn.Sequential(nn.Linear(2, 2)), None))
    assert run(files, "probe") == 2
    assert "no recognizable decoder layers" in capsys.readouterr().err


def test_a_small_heldout_split_is_said_with_its_count_and_uncertainty(files, tiny_loader, capsys):
    assert run(files, "probe") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("mlr: warning: ") and "rests on" in line]
    assert warnings == ["mlr: warning: the probe's held-out accuracy rests on 12 prompts (6 harmful, "
                        "6 benign): uncertain by up to ±0.28 (95 % interval); use more prompts for "
                        "a firmer number"]


def test_a_large_enough_split_gets_no_warning():
    counts = load_security_data(None, None).heldout_counts()  # the embedded split
    assert few_prompts_note("accuracy", sum(counts.values())) is None
    assert few_prompts_note("accuracy", 96) is not None


def test_held_out_limit_takes_half_per_class_in_order():
    heldout = load_security_data(None, None).heldout
    subset = heldout.balanced_subset(64)
    assert len(subset.prompts) == 64 and int(subset.labels.sum()) == 32
    harmful = [p for p, y in zip(heldout.prompts, heldout.labels.tolist()) if y == 1]
    assert subset.prompts[:32] == harmful[:32]
    assert heldout.balanced_subset(None) is heldout and heldout.balanced_subset(10_000) is heldout
    skewed = type(heldout).of(["h1", "h2", "h3", "h4", "h5"], ["b1"])
    assert skewed.balanced_subset(4).prompts == ["h1", "h2", "h3", "b1"]
