import json

import cv2
import numpy as np
import pytest

from lightseg import viz
from lightseg.cli import main
from lightseg.errors import LightsegError

PALETTE = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]


def test_colorize_hand_values():
    label = np.array([[0, 1], [255, 2]])
    out = viz.colorize(label, PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [70, 80, 90]]]
    with pytest.raises(LightsegError, match=r"label value 3 .*palette_for\(4\)"):
        viz.colorize(np.array([[3]]), PALETTE)


def test_overlay_alpha_arithmetic():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = (100, 50, 200)
    image[1, 2] = (9, 9, 9)
    label = np.array([[0, 1, 2], [2, 1, 255]])
    out = viz.overlay(image, label, PALETTE, alpha=0.25)
    # 0.75 * (100, 50, 200) + 0.25 * (10, 20, 30) = (77.5, 42.5, 157.5) -> rounded half up
    assert out[0, 0].tolist() == [78, 43, 158]
    # 0.75 * 0 + 0.25 * (70, 80, 90) = (17.5, 20, 22.5)
    assert out[1, 0].tolist() == [18, 20, 23]
    assert out[1, 2].tolist() == [9, 9, 9]  # ignored pixel: image unchanged
    assert viz.overlay(image, label, PALETTE, alpha=1.0)[0, 1].tolist() == [40, 50, 60]
    with pytest.raises(LightsegError, match="differ in size"):
        viz.overlay(image, label[:, :2], PALETTE)


def _text_width(name):
    return cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, viz.LEGEND_SCALE, 1)[0][0]


def test_legend_panel_size_and_swatches():
    image = np.full((120, 50, 3), 255, np.uint8)
    classes = ("road", "a_long_class_name", "car")
    out = viz.draw_legend(image, classes, PALETTE)
    width = viz.LEGEND_PAD + viz.LEGEND_SWATCH + viz.LEGEND_GAP + _text_width("a_long_class_name") + viz.LEGEND_PAD
    assert out.shape == (120, 50 + width, 3)
    assert np.array_equal(out[:, :50], image)
    panel = out[:, 50:].reshape(-1, 3)
    for colour in PALETTE:
        assert (panel == colour).all(1).sum() >= viz.LEGEND_SWATCH ** 2, colour

    # Only the present classes: one entry, and the other colours are absent.
    out = viz.draw_legend(image, classes, PALETTE, present={2})
    assert out.shape[1] == 50 + viz.LEGEND_PAD * 2 + viz.LEGEND_SWATCH + viz.LEGEND_GAP + _text_width("car")
    panel = out[:, 50:].reshape(-1, 3)
    assert (panel == PALETTE[2]).all(1).any()
    assert not (panel == PALETTE[0]).all(1).any() and not (panel == PALETTE[1]).all(1).any()

    # Bottom panel: three entries side by side in a wide image -> one row.
    wide = np.zeros((40, 600, 3), np.uint8)
    out = viz.draw_legend(wide, classes, PALETTE, where="bottom")
    assert out.shape == (40 + viz.LEGEND_ROW + 2 * viz.LEGEND_PAD, 600, 3)
    # A right panel on a short image wraps into columns.
    short = np.zeros((2 * viz.LEGEND_PAD + viz.LEGEND_ROW, 10, 3), np.uint8)
    assert viz.draw_legend(short, classes, PALETTE).shape[1] == 10 + 3 * width


def test_put_text_readable_on_any_background():
    for value in (0, 255, 128):
        image = np.full((40, 200, 3), value, np.uint8)
        out = viz.put_text(image, "30.0 FPS", org=(8, 24))
        assert (image == value).all(), "the input is not modified"
        box = out[5:30, 5:120].astype(int).sum(-1)
        assert (box > 600).any() and (box < 100).any(), "needs light text and a dark outline"


def _box(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.mark.parametrize("scale", [0.45, 0.6, 1.0, 1.5])
def test_put_text_outline_surrounds_the_letters_on_every_side(scale):
    """The dark outline encloses the white letters by 1-3 px on all four sides, on the OpenCV
    installed (OpenCV 5 widens text drawn thicker, which pushed an outline drawn as thicker text
    past the letters' right end)."""
    grey = np.full((90, 800, 3), 128, np.uint8)  # wide enough for scale 1.5 on OpenCV 4 and 5
    out = viz.put_text(grey, "30.0 FPS (model 12.3, eager)", org=(8, 60), scale=scale).astype(int)
    text = _box((out >= 200).all(-1))
    outline = _box((out <= 60).all(-1))
    margins = [text[0] - outline[0], text[1] - outline[1], outline[2] - text[2], outline[3] - text[3]]
    assert all(1 <= m <= 3 for m in margins), (cv2.__version__, margins)
    # Only the caption's neighbourhood changes (the outline and its faint anti-aliased edge), and text
    # beyond the image is no error.
    changed = _box((out != 128).any(-1))
    assert all(abs(a - b) <= 2 for a, b in zip(changed, outline)), (changed, outline)
    assert (viz.put_text(grey, "x", org=(-100, -100)) == grey).all()


def test_palette_for_is_distinct_and_never_black():
    pal = viz.palette_for(21)
    assert pal[:3] == ((128, 0, 0), (0, 128, 0), (128, 128, 0))  # PASCAL VOC entries 1..3
    big = viz.palette_for(255)
    assert len(set(big)) == 255 and (0, 0, 0) not in big
    with pytest.raises(LightsegError):
        viz.palette_for(0)


def test_save_png_round_trips(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200  # pure red must stay red (RGB -> BGR on disk -> RGB)
    viz.save_png(tmp_path / "rgb.png", rgb)
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "rgb.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb)
    label = np.arange(20, dtype=np.int64).reshape(4, 5)
    viz.save_png(tmp_path / "sub" / "label.png", label)
    back = cv2.imread(str(tmp_path / "sub" / "label.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and np.array_equal(back, label)
    viz.save_png(tmp_path / "big.png", label * 1000)
    assert cv2.imread(str(tmp_path / "big.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(LightsegError, match="float"):
        viz.save_png(tmp_path / "bad.png", np.zeros((4, 4), np.float32))


def _write_log(run_dir, partial_tail=False):
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(0, 100, 10):
        lines.append({"kind": "train", "iter": it, "epoch": it / 50, "time": it * 0.5, "loss": 2.0 / (1 + it),
                      "lr": 0.01 * (1 - it / 100) ** 0.9, "images_per_s": 12.0})
        if it % 50 == 40:
            lines.append({"kind": "val", "iter": it, "time": it * 0.5 + 1, "miou": 0.2 + it / 200, "pixel_acc": 0.7})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if partial_tail:
        text += '{"kind": "train", "iter": 1'
    (run_dir / "log.jsonl").write_text(text)


def test_plot_run_writes_png(tmp_path):
    run = tmp_path / "run"
    _write_log(run, partial_tail=True)
    out = viz.plot_run(run)
    assert out == run / "curves.png"
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 600
    assert img.std() > 5  # not a blank canvas
    other = viz.plot_run(run, output=tmp_path / "x" / "c.png")
    assert other.is_file() and cv2.imread(str(other)) is not None
    assert main(["plot", str(run), "--output", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").is_file()


def test_plot_run_errors(tmp_path, capsys):
    with pytest.raises(LightsegError, match=str(tmp_path / "nowhere" / "log.jsonl")):
        viz.plot_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text("\n")
    with pytest.raises(LightsegError, match="no train or val records"):
        viz.plot_run(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "log.jsonl").write_text("not json\n{}\n")
    with pytest.raises(LightsegError, match="log.jsonl:1"):
        viz.plot_run(tmp_path / "bad")
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "log.jsonl" in capsys.readouterr().err


def test_time_counts_on_across_resumes():
    from lightseg.viz import _cumulative_time

    log = [{"kind": "train", "iter": 10, "time": 5.0}, {"kind": "val", "iter": 10, "time": 7.0},
           {"kind": "train", "iter": 20, "time": 2.0},  # resumed: the clock started again
           {"kind": "train", "iter": 30, "time": 4.0}, {"kind": "train", "iter": 40, "time": 1.0}]
    assert [r["time"] for r in _cumulative_time(log)] == [5.0, 7.0, 9.0, 11.0, 12.0]
    assert log[2]["time"] == 2.0  # the records read are not changed


def _lines_by_label(fig):
    return {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}


def test_short_run_plots_visible_points_and_labels_every_series(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(
        json.dumps({"kind": "train", "iter": 4, "time": 3.0, "loss": 1.5, "lr": 0.01}) + "\n"
        + json.dumps({"kind": "val", "iter": 4, "time": 5.0, "miou": 0.31, "pixel_acc": 0.62}) + "\n")
    fig = viz.run_figure(run)
    assert len(fig.axes) == 6  # loss, lr, mIoU against iteration and against time
    for ax in fig.axes:
        legend = ax.get_legend()
        assert legend is not None
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts == [line.get_label() for line in ax.get_lines()]  # every line has its entry
        for line in ax.get_lines():
            assert line.get_marker() == "o" and len(line.get_xdata()) == 1  # one point: visible as a marker
    assert sorted(t.get_text() for ax in fig.axes[:3] for t in ax.get_legend().get_texts()) == [
        "learning rate", "train loss", "val mIoU", "val pixel acc"]
    miou = [line for line in fig.axes[2].get_lines() if line.get_label() == "val mIoU"][0]
    assert list(miou.get_xdata()) == [4] and list(miou.get_ydata()) == [0.31]
    time_loss = fig.axes[3].get_lines()[0]
    assert list(time_loss.get_xdata()) == [3.0 / 60]  # minutes
    assert main(["plot", str(run)]) == 0 and (run / "curves.png").is_file()
    assert str(run / "curves.png") in capsys.readouterr().out


def test_long_series_drop_markers_but_keep_labels(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    n = viz.MARKER_MAX_POINTS + 1
    (run / "log.jsonl").write_text("".join(json.dumps({"kind": "train", "iter": i, "loss": 1.0 / (i + 1), "lr": 0.01}) + "\n"
                                           for i in range(n)))
    fig = viz.run_figure(run)
    lines = _lines_by_label(fig)
    assert lines["train loss"].get_marker() in (None, "None", "") and len(lines["train loss"].get_xdata()) == n
    assert "val mIoU" not in lines and fig.axes[2].get_legend() is None  # no val records: "no records", no legend
    assert [t.get_text() for t in fig.axes[2].texts] == ["no records"]
