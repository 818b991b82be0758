"""The peer defenses as training options: SPPFT-style freezing of a layer block (its weights do not
move, the rest does) and SafeInstr-style mixing of refusal examples (the share asked for, from the
training split only), with their command-line errors."""

from __future__ import annotations

import pytest
import torch
from chat_models import one_thread, tiny_chat_model_dir, write_instruction_file  # noqa: F401
from mlr import cli
from mlr.data.corpus import harmful_prompts
from mlr.data.instructions import InstructionExample
from mlr.errors import MlrInputError
from mlr.models import load_model
from mlr.tuning.peers import (
    layer_parameter_names,
    mix_safety,
    parse_layer_block,
    scaled_safety_layers,
)
from mlr.tuning.train import TrainConfig, train


@pytest.mark.parametrize("layers, block", [(32, "5-14"), (30, "5-13"), (4, "1-2"), (2, "0-1")])
def test_the_sppft_block_scales_with_depth(layers, block):
    assert scaled_safety_layers(layers) == block


@pytest.mark.parametrize("text, block", [("5-13", (5, 13)), ("3", (3, 3)), (" 1 - 2 ", (1, 2))])
def test_layer_blocks_parse(text, block):
    assert parse_layer_block(text) == block


@pytest.mark.parametrize("text", ["", "a-b", "5-", "13-5", "1,2"])
def test_bad_layer_blocks_are_refused(text):
    with pytest.raises(MlrInputError):
        parse_layer_block(text)


def test_safety_mix_adds_the_share_of_refusals_from_the_training_split():
    benign = [InstructionExample(f"Say {i}.", str(i)) for i in range(97)]
    mixed = mix_safety(benign, 0.03)
    added = mixed[len(benign):]
    assert mixed[:len(benign)] == benign and len(added) == 3  # 3 of 100
    assert all(e.prompt not in harmful_prompts("heldout") for e in mix_safety(benign * 10, 0.25))
    assert all(e.response.startswith(("I can't", "I'm sorry", "I won't", "I cannot"))
               for e in added)
    assert mix_safety(benign, 0.0) == benign
    assert mix_safety(benign, 0.03) == mixed  # the same selection every time


def test_frozen_layers_keep_their_weights_and_the_rest_trains(tmp_path):
    data = write_instruction_file(tmp_path / "data.json")
    before, _ = load_model(tiny_chat_model_dir())
    train(TrainConfig(model=str(tiny_chat_model_dir()), ift=str(data), out=str(tmp_path / "ft"),
                      steps=3, batch_size=4, lr=1e-2, freeze_layers="1", progress=False))
    after, _ = load_model(tmp_path / "ft" / "model")
    frozen = layer_parameter_names(before, (1, 1))
    assert frozen and all(".layers.1." in name for name in frozen)
    weights = dict(after.named_parameters())
    for name, parameter in before.named_parameters():
        same = torch.equal(parameter, weights[name])
        assert same == (name in frozen), name


def test_a_block_beyond_the_model_and_a_bad_mix_are_one_line_errors(tmp_path, capsys):
    data = write_instruction_file(tmp_path / "data.json")
    base = ["train", "--model", str(tiny_chat_model_dir()), "--data", str(data), "--steps", "1"]
    for extra in (["--freeze-layers", "1-5"], ["--freeze-layers", "x"], ["--safety-mix", "0.9"]):
        try:
            code = cli.main([*base, *extra, "--out", str(tmp_path / "ft")])
        except SystemExit as exit:
            code = exit.code
        assert code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("mlr: error:")
