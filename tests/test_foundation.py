import json

import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.cli import main
from lightseg.models.base import check_input, resize_to
from lightseg.models.blocks import ASPP, ConvBNAct, channel_shuffle, make_divisible
from lightseg.profile import count_macs, count_params


def test_check_input_errors():
    for bad, word in [(torch.zeros(3, 64, 64), "4-D"), (torch.zeros(1, 1, 64, 64), "3 input channels"),
                      (torch.zeros(1, 3, 32, 64), "at least 64"), (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating")]:
        with pytest.raises(ValueError, match=word):
            check_input(bad)
    check_input(torch.zeros(2, 3, 64, 65))


def test_resize_to_by_size_not_halving():
    x = torch.randn(1, 4, 23, 30)  # 360x480 at 1/16 is 22.5x30 -> 23x30
    assert resize_to(x, (45, 60)).shape[-2:] == (45, 60)
    assert resize_to(x, (23, 30)) is x


def test_channel_shuffle_hand_computed():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    # groups=2: [0 1 2 | 3 4 5] -> [0 3 1 4 2 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    with pytest.raises(ValueError):
        channel_shuffle(torch.zeros(1, 5, 1, 1), 2)


def test_make_divisible():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(10) == 16 or make_divisible(10) == 8
    assert make_divisible(91) == 88


def test_mac_counter_hand_computed():
    # conv 3->8, 3x3, at 64x64 output: 64*64*8*3*9 MACs; grouped conv counts cin/groups; linear in*out.
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), (64, 64)) == 64 * 64 * 8 * 3 * 9
    assert count_macs(nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3), (64, 64)) == 32 * 32 * 6 * 1 * 9
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    assert count_macs(seq, (64, 64)) == 64 * 64 * 4 * 3 + 4 * 10
    assert count_macs(seq, (64, 64), device="meta") == 64 * 64 * 4 * 3 + 4 * 10


def test_aspp_shapes_and_params():
    a = ASPP(16, 8, rates=(1, 2), image_pooling=True)
    assert a(torch.randn(2, 16, 9, 11)).shape == (2, 8, 9, 11)
    # 1x1 (16*8) + two 3x3 (16*8*9 each) + pool 1x1 (16*8) + project (32*8), each conv followed by BN (2*8)
    convs = 16 * 8 + 2 * 16 * 8 * 9 + 16 * 8 + 32 * 8
    assert count_params(a) == convs + 5 * 2 * 8
    assert ConvBNAct(3, 5, 3)[0].bias is None


def test_unknown_model_suggests():
    with pytest.raises(lightseg.LightsegError, match="mininet_95k"):
        lightseg.create_model("mininet_95")


def test_cli_user_error_exit_code(capsys):
    assert main(["bench", "--model", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err and "Traceback" not in err


def test_inference_params_exclude_train_only_heads():
    from lightseg.profile import count_inference_params

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)  # 3*4*9 + 4 = 112
            self.aux = nn.Conv2d(4, 2, 1)  # 4*2 + 2 = 10, train only

        def forward(self, x):
            y = self.body(x)
            return {"out": y, "aux": [self.aux(y)]} if self.training else y

    m = WithAux()
    assert count_params(m) == 122
    assert count_inference_params(m) == 112


def test_models_json_cli(capsys):
    assert main(["models", "--json", "--size", "64", "96"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(lightseg.list_models())
    for r in rows:
        assert r["input_size"] == [64, 96] and r["macs"] > 0 and r["params"] >= r["params_inference"] > 0
