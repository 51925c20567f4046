"""Fine-tuning learns, is reproducible, and its head files are checked."""
import os
import re

import numpy as np
import pytest
from PIL import Image

import jclip  # noqa: F401  (must precede jittor)
from jclip.weights.checkpoint import CheckpointError, save_state_dict
from jclip.models.convnext import convnextv2
from jclip import finetune as ft
from jclip.data.images import ImageLoadError
from jclip.finetune.data import eval_transform, image_batches

COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 40)]
OFFSET = 10  # contest ids 10..13 -> 0..3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 colour classes (noisy, varied sizes) + a distractor class, and a tiny
    random atto backbone saved as a jclip weights file."""
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.RandomState(0)
    lists = {"train": [], "val": []}
    for split, n in (("train", 6), ("val", 4)):
        for c, colour in enumerate(COLOURS + [(128, 128, 128)]):
            for i in range(n):
                h, w = rng.randint(40, 64, 2)
                img = np.clip(np.array(colour) + rng.randn(h, w, 3) * 40, 0, 255)
                name = f"{split}_{c}_{i}.{'png' if i % 2 else 'jpg'}"
                Image.fromarray(img.astype(np.uint8)).save(root / name)
                label = OFFSET + c if c < 4 else 99  # 99: outside the subset
                lists[split].append(f"{name} {label}")
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("\n".join(lines))
    model = convnextv2("atto")
    weights = root / "atto.pkl"
    save_state_dict(weights, {k: v.numpy() for k, v in model.state_dict().items()},
                    {"model": "convnextv2_atto"})
    return root


def _train(root, mode, **kw):
    args = dict(labels=(OFFSET, OFFSET + 3), val_list=str(root / "val.txt"),
                mode=mode, batch_size=8, size=32, seed=3, verbose=False)
    args.update(kw)
    return ft.train(str(root / "atto.pkl"), str(root / "train.txt"), **args)


def test_read_list_subset(data):
    paths, labels = ft.read_list(str(data / "train.txt"), label_range=(10, 13))
    assert len(paths) == 24 and sorted(set(labels)) == [0, 1, 2, 3]
    assert ft.parse_label_range("244-373") == (244, 373)


def test_fast_mode_learns_and_is_reproducible(data, tmp_path):
    r1 = _train(data, "fast", epochs=60, lr=1e-2, out=str(tmp_path / "h.pkl"))
    r2 = _train(data, "fast", epochs=60, lr=1e-2)
    best = r1["history"][r1["best_epoch"] - 1]
    print("fast:", best)
    assert r1["history"][-1]["train_acc"] > 0.9 and best["train_acc"] > 0.9 and best["val_acc"] >= 0.75  # chance 0.25
    assert r1["history"] == r2["history"]
    for k in r1["state"]:
        np.testing.assert_array_equal(r1["state"][k], r2["state"][k])
    assert set(r1["state"]) == {"head.weight", "head.bias"}  # only what trained
    assert os.path.getsize(tmp_path / "h.pkl") < 10_000


def test_fast_mode_features_come_from_the_feature_cache(data, tmp_path, monkeypatch):
    """A retrain reads the backbone features back instead of encoding again,
    and the head is the same as without the cache."""
    plain = _train(data, "fast", epochs=5, lr=1e-2)
    first = _train(data, "fast", epochs=5, lr=1e-2, cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("images-convnextv2-atto-*.npz"))) == 2   # train, val
    from jclip.finetune import training

    def no_encoding(*a, **k):
        raise AssertionError("encoded again although the cache holds the features")
    monkeypatch.setattr(training, "_encode_batches", no_encoding)
    again = _train(data, "fast", epochs=5, lr=1e-2, cache_dir=str(tmp_path / "cache"))
    for r in (first, again):
        assert r["history"] == plain["history"]
        for k in plain["state"]:
            np.testing.assert_array_equal(r["state"][k], plain["state"][k])


@pytest.mark.slow
def test_full_mode_learns_predicts_and_checks_pairing(data, tmp_path):
    out = str(tmp_path / "full.pkl")
    r = _train(data, "full", epochs=6, lr=2e-3, unfreeze=1, out=out)
    r2 = _train(data, "full", epochs=6, lr=2e-3, unfreeze=1)
    best = r["history"][r["best_epoch"] - 1]
    print("full:", best)
    assert r["history"] == r2["history"]
    for k in r["state"]:
        np.testing.assert_array_equal(r["state"][k], r2["state"][k])
    assert r["history"][-1]["train_acc"] > 0.9 and best["train_acc"] > 0.9 and best["val_acc"] >= 0.75
    assert any(k.startswith("stages.3.") for k in r["state"])
    assert not any(k.startswith("stages.2.") for k in r["state"])

    model = ft.load_finetuned(str(data / "atto.pkl"), out)
    val = [ln.split()[0] for ln in (data / "val.txt").read_text().splitlines()
           if int(ln.split()[1]) != 99]
    paths, ids, probs = ft.predict(model, [str(data / v) for v in val], k=3, verbose=False)
    truth = np.array([int(os.path.basename(p).split("_")[1]) + OFFSET for p in paths])
    assert ids.shape == (16, 3) and ids.min() >= OFFSET and ids.max() <= OFFSET + 3
    assert (ids[:, 0] == truth).mean() >= 0.75
    assert np.all(np.diff(probs, axis=1) <= 0)

    # a head trained on one backbone refuses another
    other = tmp_path / "other.pkl"
    save_state_dict(other, {k: v.numpy() for k, v in convnextv2("atto").state_dict().items()},
                    {"model": "convnextv2_atto"})
    with pytest.raises(CheckpointError, match="SHA-256"):
        ft.load_finetuned(str(other), out)


def test_unreadable_image_skipped_or_strict(data, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = str(data / "train_0_0.jpg")
    skipped = []
    batches = list(image_batches([good, str(bad), str(bad)], 4, eval_transform(32), skipped, threads=2))
    assert batches[0][0].shape == (1, 3, 32, 32) and list(batches[0][1]) == [0]
    assert skipped == [str(bad)]                                   # reported once
    assert capsys.readouterr().err.count("warning: skipping unreadable image") == 1
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        list(image_batches([str(bad)], 4, eval_transform(32), [], strict=True))


def test_lists_are_read_by_the_contest_reader(data, tmp_path):
    """finetune and the contest pipeline share jclip.data.lists: a BOM and CRLF
    line ends are accepted, and a bad line gives the same message."""
    from jclip.data.lists import ListFormatError, read_labelled_list
    lines = (data / "train.txt").read_text().splitlines()
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    paths, labels = ft.read_list(str(crlf), root=str(data), label_range=(10, 13))
    ref_paths, ref_labels = ft.read_list(str(data / "train.txt"), label_range=(10, 13))
    assert paths == ref_paths and list(labels) == list(ref_labels)
    bad = tmp_path / "bad.txt"
    bad.write_text(lines[0] + "\n" + "train_0_1.png ten\n")
    with pytest.raises(ListFormatError) as from_finetune:
        ft.read_list(str(bad))
    with pytest.raises(ListFormatError) as from_contest:
        read_labelled_list(str(bad), 374)
    assert str(from_finetune.value) == str(from_contest.value)
    assert "bad.txt:2: expected 'path label'" in str(from_finetune.value)


def test_cli_train_and_predict(data, tmp_path, capsys):
    from jclip.finetune.cli import main
    head, top = tmp_path / "cli.pkl", tmp_path / "top.txt"
    main(["train", "--weights", str(data / "atto.pkl"), "--list", str(data / "train.txt"),
          "--labels", "10-13", "--out", str(head), "--epochs", "2", "--batch-size", "8",
          "--size", "32", "--seed", "1"])
    assert "saved" in capsys.readouterr().out
    main(["predict", "--weights", str(data / "atto.pkl"), "--head", str(head),
          "--images", str(data / "val.txt"), "--topk", "2", "--out", str(top)])
    model = ft.load_finetuned(str(data / "atto.pkl"), str(head))
    paths, ids, _ = ft.predict(model, str(data / "val.txt"), k=2, verbose=False)
    assert model.image_size == 32
    assert top.read_text().splitlines() == [f"{os.path.basename(p)} {a} {b}" for p, (a, b) in zip(paths, ids)]
    capsys.readouterr()
    assert main(["train", "--weights", str(data / "atto.pkl"), "--list", str(data / "train.txt"),
                 "--labels", "50-60", "--out", str(tmp_path / "x.pkl")]) == 1      # jclip.commands: failed work
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.match(r"error: .*train.txt.*10-13|error: .*no images with labels 50-60", err), err


def test_train_augmentation_against_torchvision(photos):
    """TrainTransform: a crop that cannot fit falls back to the whole image, then
    bicubic resize, a seeded flip and the card's normalisation, as torchvision's."""
    T = pytest.importorskip("torchvision.transforms")
    from jclip.data.images import TrainTransform
    from jclip.catalog import get_card
    card = get_card("convnextv2_base")
    ref = T.Compose([T.Resize((48, 48), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                     T.Normalize(card.mean, card.std)])
    img = photos()[0].convert("RGB").crop((0, 0, 301, 301))
    whole = ft.data.train_transform(48, scale=(1.0, 1.0))       # only aspect 1 fits: the whole image
    expected = ref(img).numpy()
    flips = []
    for seed in range(8):
        out = whole(img, np.random.RandomState(seed))
        flipped = np.abs(out - expected[:, :, ::-1]).max() <= 1e-5
        assert flipped or np.abs(out - expected).max() <= 1e-5, seed
        flips.append(flipped)
    assert any(flips) and not all(flips)
    crop = TrainTransform.for_model("convnextv2_base", 48)
    a, b = crop(img, np.random.RandomState(5)), crop(img, np.random.RandomState(5))
    np.testing.assert_array_equal(a, b)                              # same seed, same crop
    assert np.abs(a - crop(img, np.random.RandomState(6))).max() > 0.1
