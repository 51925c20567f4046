"""jclip's CLIP equals the PyTorch reference (open_clip, OpenAI architecture)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jclip
from jclip.weights.checkpoint import save_state_dict
from jclip.models.clip import normalize
import jclip.data.images  # noqa: E402
from reference import build_reference, reference_features

import jittor as jt
import open_clip
import torch

PROMPTS = ["a photo of a cat.", "a photo of a dog.", "itap of a Shiba Dog.", "a bad photo of the car side.",
           "a photo of the large pizza, a type of food.", "", "Café crème brûlée", "东京 タワー 🐶",
           "&amp; html &lt;tags&gt;", "3.14159 and 42", "a", "a photo of a " + "very " * 30 + "big bird.",
           "x", "the the the", "A PHOTO OF A CAT", "a tattoo of the goldfish.", "art of a panda.",
           "a drawing of the pretzel.", "a close-up photo of a dog.", "graffiti of a car."]


def check_parity(name, n_images=8):
    ref, state = build_reference(name)
    model = jclip.build_model(state)
    res = model.input_resolution
    images = np.random.default_rng(1).standard_normal((n_images, 3, res, res)).astype(np.float32)
    tokens = jclip.tokenize(PROMPTS)
    ref_img, ref_txt = reference_features(ref, images, tokens)
    with jt.no_grad():
        img = normalize(model.encode_image(images)).numpy()
        txt = normalize(model.encode_text(tokens)).numpy()
    for ours, theirs in ((img, ref_img), (txt, ref_txt)):
        cos = (ours * theirs).sum(-1)
        assert cos.min() >= 0.99999, cos.min()
        assert np.abs(ours - theirs).max() <= 1e-4, np.abs(ours - theirs).max()
    return model, ref, images, tokens


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_tiny_parity_and_logits(name):
    model, ref, images, tokens = check_parity(name)
    with jt.no_grad():
        per_image, per_text = model(images, tokens)
    with torch.no_grad():
        ref_img, ref_txt, scale = ref(torch.from_numpy(images), torch.from_numpy(tokens))
        ref_per_image = (scale * ref_img @ ref_txt.T).numpy()
        ref_per_text = (scale * ref_txt @ ref_img.T).numpy()     # open_clip's own convention
    assert float(scale) > 10                                     # exp(log(1/0.07)): the scale is applied
    assert per_image.shape == (len(images), len(tokens)) and per_text.shape == (len(tokens), len(images))
    np.testing.assert_allclose(per_image.numpy(), ref_per_image, atol=2e-3)
    np.testing.assert_allclose(per_text.numpy(), ref_per_text, atol=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B/32", "RN101"])
def test_full_size_parity(name):
    model, *_ = check_parity(name)
    n_params = sum(int(np.prod(v.shape)) for k, v in model.state_dict().items()
                   if "running_" not in k)
    assert n_params == {"ViT-B/32": 151_277_313, "RN101": 119_688_033}[name]


def test_cpu_slices_match_the_reference():
    # On CPU conv towers run in slices of cpu_batch (jclip/batching.py); a batch
    # that does not divide evenly still gives the reference's features, in order.
    ref, state = build_reference("tiny-rn")
    model = jclip.build_model(state)
    assert model.visual.cpu_batch == 16
    model.visual.cpu_batch = 3
    images = np.random.default_rng(2).standard_normal((11, 3, 64, 64)).astype(np.float32)
    ref_img, _ = reference_features(ref, images, jclip.tokenize(["a"]))
    ours = jclip.encode_images(model, images, batch_size=8)   # slices 3+3+2, then 3
    assert ours.shape == ref_img.shape
    assert np.abs(ours - ref_img).max() <= 1e-4


def test_batchnorm_statistics_matter():
    # Eval-mode BN must use the running statistics: changing them changes features.
    _, state = build_reference("tiny-rn")
    images = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    a = jclip.build_model(state).encode_image(images).numpy()
    state = dict(state, **{"visual.bn1.running_mean": state["visual.bn1.running_mean"] + 1})
    b = jclip.build_model(state).encode_image(images).numpy()
    assert np.abs(a - b).max() > 1e-3


def test_text_cut_after_eot_is_exact():
    # encode_text drops positions after the last EOT; the causal mask makes that exact.
    _, state = build_reference("tiny-vit")
    model = jclip.build_model(state)
    tokens = jclip.tokenize(["a photo of a cat.", "hi"])
    short = model.encode_text(tokens).numpy()
    full = model.encode_token_embeddings(model.token_embedding(jt.array(tokens.astype(np.int32))),
                                         tokens.argmax(-1)).numpy()
    np.testing.assert_allclose(short, full, atol=1e-5)


def test_load_converted_file_and_errors(tmp_path):
    _, state = build_reference("tiny-vit")
    path = tmp_path / "tiny.pkl"
    save_state_dict(str(path), state, {"model": "tiny-vit"})
    model, preprocess = jclip.load(str(path), device="cpu")
    assert model.name == "tiny-vit" and preprocess.size == 32 and not model.is_training()
    os.environ["JCLIP_WEIGHTS"] = str(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match=r"ViT-B-32\.(safetensors|pkl): no converted weights.*convert.py"):
            jclip.load("ViT-B/32")
    finally:
        del os.environ["JCLIP_WEIGHTS"]
    with pytest.raises(FileNotFoundError, match="not a model name"):
        jclip.load(str(tmp_path / "nothing.pkl"))
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ValueError, match="junk.pkl"):
        jclip.load(str(junk))
    broken = dict(state)
    del broken["visual.ln_post.weight"]
    broken["visual.extra"] = np.zeros(3, np.float32)
    broken["text_projection"] = np.zeros((5, 5), np.float32)
    bad = tmp_path / "bad.pkl"
    save_state_dict(str(bad), broken, {"model": "bad"})
    with pytest.raises(ValueError) as err:
        jclip.load(str(bad))
    for word in ("bad.pkl", "visual.ln_post.weight", "visual.extra", "text_projection"):
        assert word in str(err.value)


def test_available_models():
    # OpenAI's nine first, in clip.available_models() order (more CLIPs may follow)
    assert jclip.available_models()[:9] == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                                        "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


def test_import_without_gpu_or_internet(tmp_path):
    # A fake `nvcc` on PATH (no driver, no CUDA runtime) and HOME without a
    # Jittor oneDNN download: plain `import jittor` would try to build CUDA
    # code or download oneDNN; after `import jclip` neither happens.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvcc").write_text("#!/bin/sh\nexit 1\n")
    (fake / "nvcc").chmod(0o755)
    code = ("import os, jclip; print(repr(os.environ.get('nvcc_path')), os.environ.get('use_mkl')); "
            "import jittor as jt; print('cuda', jt.has_cuda)")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", https_proxy="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9")
    env.pop("nvcc_path", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.strip().split("\n")[-2:]
    assert first.startswith("''"), out.stdout  # nvcc_path forced empty: no CUDA build
    assert second in ("cuda 0", "cuda False"), out.stdout
    # a user's own choice wins
    env["nvcc_path"] = ""
    env["use_mkl"] = "0"
    out = subprocess.run([sys.executable, "-c", "import os, jclip; print(os.environ['use_mkl'])"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0"


def test_jclip_never_imports_torch():
    code = ("import sys; sys.modules['torch'] = None; import jclip, numpy as np; "
            "jclip.tokenize('a'); import jclip.models.load, jclip.models.clip, jclip.data.images, jclip.features.encode, jclip.weights.checkpoint; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


TOKENIZER_CORPUS = ["a photo of a cat.", "Café crème brûlée — naïve résumé", "&amp;lt;b&amp;gt; Tom &amp; Jerry",
                    "&quot;quoted&quot; &#39;x&#39;", "I ❤️ emoji 🐶🍕👩‍👩‍👧", "東京タワーの写真", "中文 测试，标点！",
                    "Hello,   world!!!  ...  ?!", "3.14159 2026 1,000,000 #42 @user", "", "   ",
                    "don't we'll they're I'M", "Thu-dog_Shiba_Dog", "a\tb\nc", "ÀÉÎÕÜ ß æ ø", "word " * 200]


def test_tokenizer_matches_openai():
    ours = jclip.tokenize(TOKENIZER_CORPUS, truncate=True)
    theirs = open_clip.tokenize(TOKENIZER_CORPUS).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert ours[-1, -1] == 49407  # truncated: EOT stays last
    assert jclip.tokenize("a photo of a cat.")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    with pytest.raises(ValueError, match="longer than the context"):
        jclip.tokenize(["word " * 200])


def test_preprocess_matches_reference_on_photos(photos):
    from torchvision import transforms as T
    ref = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                     lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(open_clip.OPENAI_DATASET_MEAN,
                                                                              open_clip.OPENAI_DATASET_STD)])
    pre = jclip.Preprocess(224)
    assert jclip.data.images.preprocess_for("ViT-B/32").id == pre.id     # the card gives the same transform
    for img in photos():
        ours = pre(img)
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
        assert np.abs(ours - ref(img).numpy()).max() <= 1e-6
        np.testing.assert_array_equal(ours, pre(img))  # deterministic


def test_preprocess_modes(tmp_path):
    pre = jclip.Preprocess(32)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    images = {"L": rgb.convert("L"), "LA": rgb.convert("LA"), "P": rgb.convert("P"), "RGBA": rgb.convert("RGBA"),
              "CMYK": rgb.convert("CMYK"), "I;16": Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257))}
    for mode, img in images.items():
        out = pre(img)
        assert out.shape == (3, 32, 32) and np.isfinite(out).all(), mode
    # 16-bit grey keeps its tones (plain convert("RGB") would clip it to white)
    np.testing.assert_allclose(pre(images["I;16"]), pre(images["L"]), atol=1e-5)


def test_loader_reports_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"image_{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths.insert(2, str(tmp_path / "bad.jpg"))
    paths.append(str(tmp_path / "missing.png"))
    pre = jclip.Preprocess(16)
    batch, ok, errors = jclip.load_images(paths, pre, workers=3)
    assert batch.shape == (5, 3, 16, 16) and ok == [0, 1, 3, 4, 5]
    assert [p for p, _ in errors] == [paths[2], paths[-1]]
    assert "bad.jpg" in errors[0][1]
    np.testing.assert_array_equal(batch[2], pre(Image.open(paths[3])))
    with pytest.raises(jclip.data.images.ImageLoadError, match="bad.jpg"):
        jclip.load_images(paths, pre, strict=True)
    seen = []
    for idx, b, errs in jclip.data.images.iter_batches(paths, pre, batch_size=3):
        seen += idx
        assert len(b) == len(idx)
    assert seen == [0, 1, 3, 4, 5]
    assert list(jclip.data.images.iter_batches([], pre)) == []       # nothing to read: no batch, no error


def test_onednn_layout_and_fallback(tmp_path, monkeypatch):
    from jclip import jittor_env as env
    inc, lib = tmp_path / "include", tmp_path / "lib"
    inc.mkdir(); lib.mkdir()
    (inc / "dnnl.hpp").write_text("")
    (lib / "libdnnl.so").write_text("")
    monkeypatch.setattr(env, "_JT_MKL_DIR", str(tmp_path / "mkl"))
    monkeypatch.setattr(env, "_JT_MKL_HOME", str(tmp_path / "mkl" / "dnnl_lnx_2.2.0_cpu_gomp"))
    monkeypatch.setattr(env, "_SYSTEM_LIB_DIRS", (str(lib),))
    monkeypatch.setattr(env, "_SYSTEM_INCLUDE_DIRS", (str(inc),))
    monkeypatch.delenv("use_mkl", raising=False)
    env.configure()
    home = tmp_path / "mkl" / "dnnl_lnx_2.2.0_cpu_gomp"
    assert os.path.realpath(home / "lib" / "libmkldnn.so") == str(lib / "libdnnl.so")
    assert (home / "include" / "dnnl.hpp").exists() and "use_mkl" not in os.environ
    # nothing installed anywhere: oneDNN is switched off with one clear warning
    monkeypatch.setattr(env, "_JT_MKL_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(env, "_JT_MKL_HOME", str(tmp_path / "empty" / "dnnl_lnx_2.2.0_cpu_gomp"))
    monkeypatch.setattr(env, "_SYSTEM_LIB_DIRS", ())
    with pytest.warns(RuntimeWarning, match="libdnnl-dev"):
        env.configure()
    assert os.environ["use_mkl"] == "0"
