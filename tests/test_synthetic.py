import json

import cv2
import numpy as np
import pytest

from lightseg.data.classes import CAMVID_CLASSES
from lightseg.data.synthetic import MARKER_NAME, generate_synthetic, render_scene, scene_seed
from lightseg.errors import DataError, LightsegError

SIZE = (180, 240)


@pytest.fixture(scope="module")
def scenes():
    """20 small scenes, rendered once for the statistics tests."""
    return [render_scene(np.random.default_rng(100 + i), SIZE) for i in range(20)]


def test_render_is_deterministic_per_seed():
    a_img, a_lab = render_scene(np.random.default_rng(3), SIZE)
    b_img, b_lab = render_scene(np.random.default_rng(3), SIZE)
    c_img, c_lab = render_scene(np.random.default_rng(4), SIZE)
    assert a_img.shape == SIZE + (3,) and a_img.dtype == np.uint8
    assert a_lab.shape == SIZE and a_lab.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_lab, c_lab)


def test_odd_sizes_and_too_small():
    img, lab = render_scene(np.random.default_rng(0), (250, 330))
    assert img.shape == (250, 330, 3) and lab.shape == (250, 330)
    with pytest.raises(LightsegError, match="too small"):
        render_scene(np.random.default_rng(0), (16, 200))


def test_every_class_appears_and_labels_in_range(scenes):
    counts = np.zeros(256, np.int64)
    for _, lab in scenes:
        counts += np.bincount(lab.ravel(), minlength=256)
    assert counts[len(CAMVID_CLASSES):].sum() == 0, "labels must be CamVid train ids 0..10"
    missing = [CAMVID_CLASSES[c] for c in range(11) if counts[c] == 0]
    assert not missing, f"classes never drawn: {missing}"
    # Large structures dominate, small objects are present but not dominant (CamVid-like balance).
    share = counts[:11] / counts.sum()
    assert share[[0, 1, 3]].sum() > 0.5
    assert all(share[c] < 0.05 for c in (2, 6, 7, 9, 10))


def test_not_separable_by_colour(scenes):
    # Nearest class-mean colour, fitted on half of the scenes and scored on the other half.
    pix = np.stack([img for img, _ in scenes]).reshape(-1, 3).astype(np.float64)
    lab = np.stack([lab for _, lab in scenes]).ravel()
    half = pix.shape[0] // 2
    present = [c for c in range(11) if (lab[:half] == c).any()]
    means = np.stack([pix[:half][lab[:half] == c].mean(0) for c in present])
    sample = slice(half, None, 7)  # every 7th test pixel keeps the distance matrix small
    dist = ((pix[sample][:, None, :] - means[None]) ** 2).sum(-1)
    pred = np.asarray(present)[dist.argmin(1)]
    accuracy = (pred == lab[sample]).mean()
    assert accuracy < 0.6, f"a per-pixel colour classifier gets {accuracy:.2f}: scenes are colour-coded"
    # Classes differ in colour statistics on average, so colour is a cue (just not a sufficient one).
    assert accuracy > 0.05


def test_generate_layout_lists_and_pixels(tmp_path):
    root = generate_synthetic(tmp_path / "synth", n_train=3, n_val=2, size=(64, 96), seed=5)
    assert root == tmp_path / "synth"
    for split, n in (("train", 3), ("val", 2)):
        lines = (root / f"{split}.txt").read_text().splitlines()
        assert lines == [f"{split}/{split}_{i:05d}.png {split}annot/{split}_{i:05d}.png" for i in range(n)]
        for i, line in enumerate(lines):
            img_rel, lab_rel = line.split()
            img = cv2.cvtColor(cv2.imread(str(root / img_rel), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            lab = cv2.imread(str(root / lab_rel), cv2.IMREAD_UNCHANGED)
            assert lab.ndim == 2 and lab.dtype == np.uint8 and lab.max() <= 10
            # Lossless: the files hold exactly the scene of this split's seed (RGB order kept).
            want_img, want_lab = render_scene(np.random.default_rng(scene_seed(5, split, i)), (64, 96))
            assert np.array_equal(img, want_img) and np.array_equal(lab, want_lab)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["n_train"] == 3 and marker["size"] == [64, 96] and marker["seed"] == 5
    # Train and val come from disjoint seeds.
    assert (root / "train/train_00000.png").read_bytes() != (root / "val/val_00000.png").read_bytes()
    assert not list(root.rglob("*.tmp"))


def test_generate_is_byte_identical_and_skips_when_complete(tmp_path):
    a = generate_synthetic(tmp_path / "a", n_train=2, n_val=1, size=(64, 80), seed=1)
    b = generate_synthetic(tmp_path / "b", n_train=2, n_val=1, size=(64, 80), seed=1)
    c = generate_synthetic(tmp_path / "c", n_train=2, n_val=1, size=(64, 80), seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 3 + 2 + 1
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "train/train_00000.png").read_bytes() != (c / "train/train_00000.png").read_bytes()

    # Complete set with the same arguments: nothing is rewritten.
    target = a / "train/train_00001.png"
    target.write_bytes(b"tampered")
    generate_synthetic(a, n_train=2, n_val=1, size=(64, 80), seed=1)
    assert target.read_bytes() == b"tampered"
    # overwrite=True renders again.
    generate_synthetic(a, n_train=2, n_val=1, size=(64, 80), seed=1, overwrite=True)
    assert target.read_bytes() == (b / "train/train_00001.png").read_bytes()


def test_generate_refuses_to_clobber(tmp_path):
    root = generate_synthetic(tmp_path / "s", n_train=2, n_val=1, size=(64, 64), seed=0)
    with pytest.raises(DataError, match="overwrite=True"):
        generate_synthetic(root, n_train=4, n_val=1, size=(64, 64), seed=0)
    # A smaller set over a larger one removes the extra files of the old set.
    generate_synthetic(root, n_train=1, n_val=1, size=(64, 64), seed=0, overwrite=True)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["train_00000.png"]

    foreign = tmp_path / "camvid"
    foreign.mkdir()
    (foreign / "train.txt").write_text("train/0001TP_006690.png trainannot/0001TP_006690.png\n")
    with pytest.raises(DataError, match=str(foreign)):
        generate_synthetic(foreign, n_train=1, n_val=1, size=(64, 64))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        generate_synthetic(tmp_path / "file", n_train=1, n_val=1, size=(64, 64))


def test_camvid_dataset_reads_it(tmp_path):
    data = pytest.importorskip("lightseg.data")
    if not hasattr(data, "build_dataset"):
        pytest.skip("lightseg.data.build_dataset is not there yet")
    root = generate_synthetic(tmp_path / "s", n_train=2, n_val=1, size=(64, 96), seed=0)
    cfg = dict(getattr(data, "DEFAULT_DATA_CFG", {}), name="camvid", root=str(root), num_workers=0)
    ds = data.build_dataset(cfg, "val", train=False)
    image, label = ds[0]
    assert tuple(image.shape) == (3, 64, 96) and tuple(label.shape) == (64, 96)
    want = cv2.imread(str(root / "valannot/val_00000.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(label.numpy(), want)
