"""The one inference function (lightseg.inference): whole and sliding-window modes."""
import pytest
import torch
import torch.nn as nn

import lightseg
from lightseg.errors import ConfigError
from lightseg.inference import check_mode, predict_labels, predict_probabilities, slide_logits, window_starts


class WindowMean(nn.Module):
    """Logits: two channels, each the constant mean of the window's first input channel (a model whose
    output depends on where the window is, so overlaps can be checked by hand)."""

    def __init__(self):
        super().__init__()
        self.windows = []

    def forward(self, x):
        self.windows.append(tuple(x.shape[-2:]))
        m = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])
        return torch.cat([m, -m], dim=1)


def test_window_starts_cover_the_side_and_end_at_its_edge():
    assert window_starts(10, 4, 3) == [0, 3, 6]          # (10 - 4 + 2) // 3 + 1 = 3 windows; the last is 6..10
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]       # a 4th window, moved back to end at 11
    assert window_starts(4, 4, 2) == [0] and window_starts(3, 4, 2) == [0]  # the image fits one window


def test_overlapping_windows_average_hand_values():
    # value = column + 10 * row; windows 4x4 every 2 -> starts (0, 0), (0, 2), (2, 0), (2, 2)
    x = (torch.arange(6.0)[None, :] + 10 * torch.arange(6.0)[:, None]).expand(1, 3, 6, 6)
    model = WindowMean()
    logits = slide_logits(model, x, crop=(4, 4), stride=(2, 2))
    assert model.windows == [(4, 4)] * 4
    # window means: (0,0) 15 + 1.5 = 16.5; (0,2) 18.5; (2,0) 36.5; (2,2) 38.5
    out = logits[0, 0]
    assert out[0, 0] == pytest.approx(16.5)                                   # one window
    assert out[0, 5] == pytest.approx(18.5)
    assert out[3, 1] == pytest.approx((16.5 + 36.5) / 2)                      # two windows
    assert out[2, 2] == pytest.approx((16.5 + 18.5 + 36.5 + 38.5) / 4)        # all four
    assert out[5, 5] == pytest.approx(38.5)
    assert torch.equal(logits[0, 1], -logits[0, 0])


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return lightseg.create_model("mininet_95k", num_classes=5).eval()


def test_slide_with_window_equal_to_image_is_whole(net):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 72, 96)
    with torch.no_grad():
        whole = predict_probabilities(net, x, (72, 96))
        for crop in [(72, 96), (100, 200)]:  # the image's size, or larger: one window
            slide = predict_probabilities(net, x, (72, 96), mode="slide", crop=crop)
            assert torch.equal(slide, whole)
        flip_whole = predict_probabilities(net, x, (72, 96), flip=True, scales=(1.0, 1.25))
        flip_slide = predict_probabilities(net, x, (72, 96), flip=True, scales=(1.0, 1.25), mode="slide", crop=(90, 120))
        assert torch.equal(flip_slide, flip_whole)
        assert torch.equal(predict_labels(net, x, (72, 96), mode="slide", crop=(72, 96)), whole.argmax(1))


def test_slide_with_small_windows_runs_every_window(net):
    calls = []

    def counting(x):
        calls.append(tuple(x.shape[-2:]))
        return net(x)

    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        probs = predict_probabilities(counting, x, (96, 128), mode="slide", crop=(64, 64), stride=(32, 32))
    assert calls == [(64, 64)] * (2 * 3)  # rows start 0, 32; columns 0, 32, 64
    assert probs.shape == (1, 5, 96, 128) and torch.allclose(probs.sum(1), torch.ones(1, 96, 128), atol=1e-5)


def test_check_mode_errors_and_default_stride():
    assert check_mode("whole", (64, 64)) == ("whole", None, None)
    assert check_mode("slide", [96, 120]) == ("slide", (96, 120), (64, 80))  # stride: two thirds of the window
    assert check_mode("slide", 64, 32) == ("slide", (64, 64), (32, 32))
    with pytest.raises(ConfigError, match="eval.crop"):
        check_mode("slide")
    with pytest.raises(ConfigError, match="at least 64"):
        check_mode("slide", (32, 64))
    with pytest.raises(ConfigError, match="gaps"):
        check_mode("slide", (64, 64), (80, 32))
    with pytest.raises(ConfigError, match="whole, slide"):
        check_mode("tiles")


def test_argmax_classes_matches_torch_including_ties():
    from lightseg.inference import argmax_classes

    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9)
    x[0, 3, 2, 2] = x[0, 1, 2, 2] = 10.0  # a tie: the first maximum wins, as torch.argmax
    got = argmax_classes(x)
    assert got.dtype == torch.int64 and torch.equal(got, x.argmax(1)) and got[0, 2, 2] == 1
    assert torch.equal(argmax_classes(x.contiguous(memory_format=torch.channels_last)), x.argmax(1))
