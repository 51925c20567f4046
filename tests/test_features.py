"""Feature cache: reuse when nothing changed, re-encode what did, never mix."""
import os

import numpy as np
import pytest

import jclip  # noqa: F401
from jclip.features.cache import cached_text_encoder, encode_images_cached, encode_texts_cached
from jclip.heads import text_classifier_weights


class CountingEncoder:
    """Feature = (file size, first byte); records every item it encodes."""

    def __init__(self):
        self.seen = []

    def __call__(self, paths):
        self.seen.extend(paths)
        return np.array([[os.path.getsize(p), open(p, "rb").read(1)[0]] for p in paths],
                        dtype=np.float32)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(7):
        p = tmp_path / f"image_{i}.jpg"
        p.write_bytes(bytes([i]) * (i + 1))
        paths.append(str(p))
    return paths


def run(paths, enc, cache, **kw):
    args = dict(model_name="ViT-B/32", weights_sha256="40d3", preprocess_id="clip224",
                cache_dir=cache, batch_size=3, progress=False)
    args.update(kw)
    return encode_images_cached(paths, enc, **args)


def test_second_run_reads_back(images, tmp_path):
    enc = CountingEncoder()
    first = run(images, enc, tmp_path / "c")
    assert len(enc.seen) == 7
    np.testing.assert_array_equal(first[:, 0], np.arange(1, 8))
    second = run(images, enc, tmp_path / "c")
    assert len(enc.seen) == 7
    np.testing.assert_array_equal(first, second)
    assert not [n for n in os.listdir(tmp_path / "c") if n.startswith(".tmp")]


def test_changed_file_is_re_encoded(images, tmp_path):
    enc = CountingEncoder()
    run(images, enc, tmp_path / "c")
    with open(images[4], "wb") as f:
        f.write(b"\x09" * 20)
    os.utime(images[4], ns=(1, 1))       # different mtime even on a coarse clock
    feats = run(images, enc, tmp_path / "c")
    assert enc.seen[7:] == [os.path.abspath(images[4])]
    assert feats[4].tolist() == [20, 9]


@pytest.mark.parametrize("change", [dict(model_name="RN101"), dict(weights_sha256="8fa8"),
                                    dict(preprocess_id="clip224-flip")])
def test_other_model_or_preprocessing_is_not_reused(images, tmp_path, change):
    enc = CountingEncoder()
    run(images, enc, tmp_path / "c")
    run(images, enc, tmp_path / "c", **change)
    assert len(enc.seen) == 14


def test_corrupt_cache_is_re_encoded(images, tmp_path):
    enc = CountingEncoder()
    run(images, enc, tmp_path / "c")
    (cache_file,) = (tmp_path / "c").iterdir()
    cache_file.write_bytes(b"not an npz")
    run(images, enc, tmp_path / "c")
    assert len(enc.seen) == 14


def test_missing_file_and_bad_encoder_output(images, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        run(images + [str(tmp_path / "nope.jpg")], CountingEncoder(), tmp_path / "c")
    with pytest.raises(ValueError, match="shape"):
        run(images, lambda b: np.zeros((len(b) + 1, 2)), tmp_path / "c")
    with pytest.raises(ValueError, match="NaN"):
        run(images, lambda b: np.full((len(b), 2), np.nan), tmp_path / "c")


def test_text_features_keyed_by_exact_strings(tmp_path):
    calls = []

    def enc(texts):
        calls.extend(texts)
        return np.array([[len(t), t.count("a") + 1.0] for t in texts])

    kw = dict(model_name="ViT-B/32", weights_sha256="40d3", cache_dir=tmp_path, progress=False)
    a = encode_texts_cached(["a cat.", "a dog."], enc, **kw)
    encode_texts_cached(["a cat.", "a dog."], enc, **kw)
    assert calls == ["a cat.", "a dog."]
    b = encode_texts_cached(["a dog!", "a cat."], enc, **kw)
    assert calls == ["a cat.", "a dog.", "a dog!"]      # cached per prompt: only the new one
    np.testing.assert_array_equal(b[1], a[0])
    w = text_classifier_weights(["Thu-dog_Shiba_Dog", "Food-101_apple_pie"],
                                cached_text_encoder(enc, **kw), templates="single")
    assert calls[-2:] == ["a photo of a Shiba Dog, a type of dog.",
                          "a photo of a apple pie, a type of food."]
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-6)
    assert a.shape == (2, 2)


def _flip_feature_byte(path):
    """Change one feature value inside the npz without breaking the zip
    (rewrite the member), so only the checksum can notice."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["features"] = arrays["features"].copy()
    arrays["features"][2, 0] += 1
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_cache_heals_itself(images, tmp_path, capsys, damage):
    enc = CountingEncoder()
    good = run(images, enc, tmp_path / "c")
    (cache_file,) = (tmp_path / "c").iterdir()
    data = cache_file.read_bytes()
    if damage == "truncate":           # BadZipFile before the checksum existed
        cache_file.write_bytes(data[:len(data) // 2])
    elif damage == "flip":
        _flip_feature_byte(cache_file)
    else:
        cache_file.write_bytes(b"PK\x03\x04" + os.urandom(200))
    capsys.readouterr()
    again = run(images, enc, tmp_path / "c")
    err = capsys.readouterr().err
    assert len(enc.seen) == 14                       # encoded afresh
    np.testing.assert_array_equal(again, good)
    lines = [line for line in err.splitlines() if "corrupt" in line]
    assert len(lines) == 1 and str(cache_file) in lines[0]
    # healed: the third run reads the rewritten entry silently
    run(images, enc, tmp_path / "c")
    assert len(enc.seen) == 14 and "corrupt" not in capsys.readouterr().err


def _bar_lines(err, desc):
    return [line for line in err.splitlines() if line.startswith(desc + ":")]


def test_progress_bar_counts_images_and_prompts_not_batches(images, tmp_path, capsys, monkeypatch):
    """7 images in batches of 3: the bar (plain lines, one per update here)
    reads 3/7, 6/7, 7/7 in img/s, never 1/3 batches; prompts count prompts."""
    monkeypatch.setenv("JCLIP_PROGRESS_INTERVAL", "0")      # a line per update, no 2 s delay
    capsys.readouterr()
    run(images, CountingEncoder(), tmp_path / "c", progress=True)
    lines = _bar_lines(capsys.readouterr().err, "encoding images")
    counts = [line.split("% ", 1)[1].split(" ", 1)[0] for line in lines]
    assert counts[-1] == "7/7" and "3/7" in counts and "6/7" in counts, lines
    assert all("/3 " not in line for line in lines) and "img/s" in lines[-1]
    texts = [f"a photo of {i}." for i in range(5)]
    encode_texts_cached(texts, lambda t: np.ones((len(t), 2)), "ViT-B/32", "40d3", tmp_path,
                        batch_size=2, progress=True)
    lines = _bar_lines(capsys.readouterr().err, "encoding prompts")
    assert lines[-1].split("% ", 1)[1].startswith("5/5") and "prompt/s" in lines[-1], lines
    monkeypatch.setenv("JCLIP_PROGRESS", "0")                # every bar off
    run(images, CountingEncoder(), tmp_path / "d", progress=True)
    assert capsys.readouterr().err == ""
