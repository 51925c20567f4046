"""jclip.checkpoint / jclip.torch_reader against real files made by PyTorch.

torch (and open_clip, timm) appear only here, to produce the files; every
tensor the torch-free reader returns must equal torch's bit for bit.
"""
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest

import jclip  # noqa: F401  (before jittor/torch: safe Jittor defaults)
from jclip.catalog import prepare_state_dict
from jclip.weights.checkpoint import CheckpointError, META_KEY, read_state_dict, save_state_dict
from jclip.weights.convert import convert_checkpoint
from jclip.io import sha256_file

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def tiny_clip(vision_layers, image_size, seed=0):
    """An OpenAI-architecture CLIP (QuickGELU, OpenAI key names), tiny."""
    torch.manual_seed(seed)
    vision = dict(layers=vision_layers, width=64, head_width=32,
                  image_size=image_size, patch_size=8)
    text = dict(context_length=12, vocab_size=60, width=32, heads=2, layers=2)
    model = open_clip.model.CLIP(16, vision, text, quick_gelu=True)
    with torch.no_grad():   # random, not constant, norms/BN stats
        for n, p in model.named_parameters():
            if n.endswith(("ln_1.weight", "ln_2.weight", "bias")):
                p.normal_()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return model.eval(), image_size


def save_torchscript(model, image_size, path):
    """fp16 traced TorchScript archive, the way OpenAI shipped CLIP."""
    model = model.half()
    image = torch.randn(1, 3, image_size, image_size).half()
    text = torch.randint(0, 60, (1, 12))
    traced = torch.jit.trace(model, (image, text), check_trace=False)
    torch.jit.save(traced, str(path))
    return path


def tiny_archive(tmp_path_factory, folder, name, layers, width):
    """A tiny CLIP saved as an OpenAI-style TorchScript file ``folder/name``."""
    model, size = tiny_clip(layers, width)
    return save_torchscript(model, size, tmp_path_factory.mktemp(folder) / name)


@pytest.fixture(scope="module")
def vit_archive(tmp_path_factory):
    return tiny_archive(tmp_path_factory, "ts", "ViT-tiny.pt", 2, 32)


@pytest.fixture(scope="module")
def rn_archive(tmp_path_factory):
    return tiny_archive(tmp_path_factory, "ts", "RN-tiny.pt", (1, 1, 1, 1), 64)


def assert_same(ours, ref):
    """Same keys (and order), dtype, shape and bits."""
    assert list(ours) == list(ref)
    for k, t in ref.items():
        want = t.detach().contiguous().numpy()
        got = ours[k]
        assert isinstance(got, np.ndarray), k
        assert got.dtype == want.dtype and got.shape == want.shape, k
        assert got.reshape(-1).view(np.uint8).tobytes() == \
            want.reshape(-1).view(np.uint8).tobytes(), k


def odd_tensors():
    """Every dtype the reader supports, and views (offset, strides) into
    shared storages."""
    torch.manual_seed(1)
    base = torch.randn(6, 8)
    return {
        "fp32": torch.randn(3, 5),
        "fp16": torch.randn(4, 2).half(),
        "fp64": torch.randn(3).double(),
        "int64": torch.arange(-3, 9),
        "int32": torch.arange(5, dtype=torch.int32),
        "uint8": torch.arange(7, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(4.6052),
        "transposed": base.t(),
        "row_slice": base[2:4],
        "col_slice": base[:, 3:5],
        "empty": torch.zeros(0, 3),
    }


# ---------------------------------------------------------------- TorchScript

@pytest.mark.parametrize("which", ["vit", "rn"])
def test_torchscript_equals_jit_load(which, vit_archive, rn_archive):
    path = vit_archive if which == "vit" else rn_archive
    sd, meta = read_state_dict(path)
    assert meta["format"] == "torchscript"
    ref = torch.jit.load(str(path)).state_dict()
    assert_same(sd, ref)
    assert sd["logit_scale"].shape == () and sd["logit_scale"].dtype == np.float16
    assert sd["visual.conv1.weight"].dtype == np.float16
    if which == "rn":
        assert sd["visual.bn1.num_batches_tracked"].dtype == np.int64
        assert "visual.attnpool.c_proj.weight" in sd


# ---------------------------------------------------- torch.save zip, legacy

@pytest.mark.parametrize("legacy", [False, True])
def test_torch_save_equals_torch_load(tmp_path, legacy):
    path = tmp_path / "sd.pt"
    torch.save(odd_tensors(), path, _use_new_zipfile_serialization=not legacy)
    sd, meta = read_state_dict(path)
    assert meta["format"] == ("torch-legacy" if legacy else "torch-zip")
    assert_same(sd, torch.load(path))


@pytest.mark.parametrize("legacy", [False, True])
def test_bfloat16_widens_to_float32(tmp_path, legacy):
    t = torch.randn(3, 4).bfloat16()
    torch.save({"w": t, "s": t[1, 2]}, tmp_path / "bf.pt",
               _use_new_zipfile_serialization=not legacy)
    sd, _ = read_state_dict(tmp_path / "bf.pt")
    assert sd["w"].dtype == np.float32
    assert np.array_equal(sd["w"], t.float().numpy())
    assert sd["s"].shape == () and sd["s"] == t[1, 2].float().item()


def test_wrappers_and_module_prefix_are_stripped(tmp_path):
    inner = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    for wrapper in ({"model": inner, "epoch": 3},
                    {"state_dict": inner, "optimizer_steps": 5}):
        torch.save(wrapper, tmp_path / "w.pt")
        sd, _ = read_state_dict(tmp_path / "w.pt")
        assert list(sd) == ["a.weight", "b"]


def test_parameters_saved_whole(tmp_path):
    # nn.Parameter pickles through _rebuild_parameter / _rebuild_from_type_v2
    lin = torch.nn.Linear(3, 2)
    torch.save(dict(lin.named_parameters()), tmp_path / "p.pt")
    sd, _ = read_state_dict(tmp_path / "p.pt")
    assert_same(sd, {k: v.detach() for k, v in lin.named_parameters()})


# ------------------------------------------------------------- jclip .pkl

def test_save_then_read_and_jittor_load(tmp_path, vit_archive):
    sd, _ = read_state_dict(vit_archive)
    out = tmp_path / "w.pkl"
    meta = save_state_dict(out, sd, {"model": "tiny", "source_sha256": "ab"})
    assert meta["dtype"] == "float32"
    assert os.stat(out).st_mode & 0o644 == 0o644   # readable like any file
    back, bmeta = read_state_dict(out)
    assert bmeta["model"] == "tiny" and bmeta["format"] == "jclip"
    assert list(back) == list(sd)
    for k, v in sd.items():
        want = v.astype(np.float32) if v.dtype.kind == "f" else v
        assert back[k].dtype == want.dtype and back[k].shape == want.shape, k
        assert np.array_equal(back[k], want), k
    import jittor
    loaded = jittor.load(str(out))
    assert loaded["logit_scale"].shape == ()   # 0-d stays 0-d
    assert loaded[META_KEY]["model"] == "tiny"
    assert np.array_equal(loaded["visual.proj"], back["visual.proj"])


def test_save_half(tmp_path):
    sd = {"w": np.random.rand(3, 2).astype(np.float32),
          "n": np.arange(3, dtype=np.int64)}
    save_state_dict(tmp_path / "h.pkl", sd, {}, dtype="float16")
    back, meta = read_state_dict(tmp_path / "h.pkl")
    assert meta["dtype"] == "float16"
    assert back["w"].dtype == np.float16 and back["n"].dtype == np.int64
    assert np.array_equal(back["w"], sd["w"].astype(np.float16))


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    from jclip.weights import pkl
    real_write, written = pkl._HashingWriter.write, []

    def disk_fills_up(self, b):
        if written:
            raise OSError(28, "No space left on device")
        written.append(len(b))
        return real_write(self, b)
    monkeypatch.setattr(pkl._HashingWriter, "write", disk_fills_up)
    big = {f"w{i}": np.ones(100_000, np.float32) for i in range(3)}
    with pytest.raises(OSError):
        save_state_dict(tmp_path / "x.pkl", big, {})
    assert written and os.listdir(tmp_path) == []


def test_save_rejects_non_plain_meta(tmp_path):
    with pytest.raises(ValueError):
        save_state_dict(tmp_path / "x.pkl", {"w": np.ones(2)},
                        {"model": ["not", "plain"]})
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------- safety

class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pkl_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "weights.pkl"
    bad.write_bytes(pickle.dumps({"w": np.ones(2), "x": _RunsCommand(marker)}))
    with pytest.raises(CheckpointError, match="weights.pkl.*posix.system|"
                       "weights.pkl.*os.system"):
        read_state_dict(bad)
    assert not marker.exists()


def test_malicious_torch_zip_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.pt"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_RunsCommand(marker),
                                                    protocol=2))
    with pytest.raises(CheckpointError, match="model.pt.*refusing"):
        read_state_dict(bad)
    assert not marker.exists()


def test_malicious_legacy_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, bad, _use_new_zipfile_serialization=False)
    # Keep the magic, protocol and sys-info pickles; replace the payload.
    with open(bad, "rb") as f:
        for _ in range(3):
            pickle.load(f)
        end = f.tell()
    prefix = bad.read_bytes()[:end]
    bad.write_bytes(prefix + pickle.dumps(_RunsCommand(marker), protocol=2))
    with pytest.raises(CheckpointError, match="legacy.pt.*refusing"):
        read_state_dict(bad)
    assert not marker.exists()


def test_object_array_refused(tmp_path):
    bad = tmp_path / "obj.pkl"
    bad.write_bytes(pickle.dumps({"w": np.array([1, "a"], dtype=object)}))
    with pytest.raises(CheckpointError, match="obj.pkl.*(object array|refusing dtype)"):
        read_state_dict(bad)


# --------------------------------------------------------- corrupt inputs

def _convert_fails(src, tmp_path, match):
    out = tmp_path / "out" / "w.pkl"
    with pytest.raises(CheckpointError, match=match) as e:
        convert_checkpoint(src, out)
    assert os.path.basename(str(src)) in str(e.value)
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_truncated_zip(tmp_path, vit_archive):
    bad = tmp_path / "ViT-B-32.pt"
    data = vit_archive.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    _convert_fails(bad, tmp_path, "truncated zip")


def test_html_page(tmp_path):
    bad = tmp_path / "RN101.pt"
    bad.write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>")
    _convert_fails(bad, tmp_path, "HTML")


def test_empty_and_random(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    _convert_fails(tmp_path / "empty.pt", tmp_path, "empty file")
    (tmp_path / "noise.pt").write_bytes(np.random.RandomState(0)
                                        .bytes(4096))
    _convert_fails(tmp_path / "noise.pt", tmp_path, "not a checkpoint")


def test_truncated_jclip_pkl(tmp_path):
    good = tmp_path / "w.pkl"
    save_state_dict(good, {"w": np.arange(1000.0)}, {})
    data = good.read_bytes()
    for cut in (len(data) - 100, len(data) // 2):   # checksum, pickle
        bad = tmp_path / "cut.pkl"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="cut.pkl"):
            read_state_dict(bad)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="cut.pkl.*checksum"):
        read_state_dict(bad)


def test_missing_storage_in_zip(tmp_path, vit_archive):
    bad = tmp_path / "nostorage.pt"
    with zipfile.ZipFile(vit_archive) as zin, \
            zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("/data/3"):
                zout.writestr(item, zin.read(item))
    _convert_fails(bad, tmp_path, "data/3 is missing")


def test_unknown_architecture(tmp_path):
    torch.save({"fc.weight": torch.ones(2, 2)}, tmp_path / "resnet.pt")
    _convert_fails(tmp_path / "resnet.pt", tmp_path, "unknown architecture")


def test_misshaped_clip_tensor(tmp_path, vit_archive):
    sd = torch.jit.load(str(vit_archive)).state_dict()
    sd["token_embedding.weight"] = torch.zeros(60, 31).half()
    torch.save(sd, tmp_path / "bad.pt")
    _convert_fails(tmp_path / "bad.pt", tmp_path,
                   "token_embedding.weight.*expected")
    sd = torch.jit.load(str(vit_archive)).state_dict()
    sd["visual.transformer.resblocks.1.attn.in_proj_weight"] = \
        torch.zeros(100, 64).half()
    torch.save(sd, tmp_path / "bad.pt")
    _convert_fails(tmp_path / "bad.pt", tmp_path, "in_proj_weight")


def test_convert_records_source(tmp_path, vit_archive):
    out = tmp_path / "w.pkl"
    meta = convert_checkpoint(vit_archive, out, model="ViT-tiny")
    assert meta["source_sha256"] == sha256_file(vit_archive)
    assert meta["architecture"] == "clip"
    assert meta["source_format"] == "torchscript"
    assert read_state_dict(out)[1]["model"] == "ViT-tiny"


# ---------------------------------------------------------------- ConvNeXt

def _jclip_convnext_atto_shapes():
    convnext = pytest.importorskip("jclip.models.convnext")
    model = convnext.convnextv2("atto")
    # Shapes only: .numpy() would run every initialiser (slow on CPU).
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def timm_atto(tmp_path_factory):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    tsd = timm.create_model("convnextv2_atto", pretrained=False).state_dict()
    with torch.no_grad():   # timm initialises GRN to zeros: randomise
        for k, v in tsd.items():
            if ".grn." in k:
                v.normal_()
    path = tmp_path_factory.mktemp("timm") / "timm.pt"
    torch.save(tsd, path)
    return path, tsd


def test_convnext_official_and_timm_agree(tmp_path, timm_atto):
    path, tsd = timm_atto
    sd, _ = read_state_dict(path)
    assert_same(sd, tsd)
    arch, official = prepare_state_dict(sd, "timm.pt")
    assert arch == "convnextv2"
    # The official names/shapes are those of jclip's ConvNeXt-V2 model.
    ref = _jclip_convnext_atto_shapes()
    assert set(official) == set(ref)
    for k in ref:
        assert official[k].shape == ref[k], k
    # timm's GRN weight becomes the official grn.gamma (1,1,1,4C).
    g = tsd["stages.1.blocks.0.mlp.grn.weight"].numpy()
    assert np.array_equal(official["stages.1.0.grn.gamma"].reshape(-1), g)

    # An official checkpoint ({'model': sd}) reads to the same tensors.
    torch.save({"model": {k: torch.from_numpy(np.array(v))
                          for k, v in official.items()}},
               tmp_path / "official.pt")
    osd, _ = read_state_dict(tmp_path / "official.pt")
    arch2, osd = prepare_state_dict(osd, "official.pt")
    assert arch2 == "convnextv2" and list(osd) == list(official)
    for k in official:
        assert np.array_equal(osd[k], official[k]), k


def test_convnext_misshaped(tmp_path, timm_atto):
    sd, _ = read_state_dict(timm_atto[0])
    _, ref = prepare_state_dict(sd, "timm.pt")
    ref["stages.2.1.pwconv1.weight"] = np.zeros((640, 100), np.float32)
    torch.save({"model": {k: torch.from_numpy(np.array(v))
                          for k, v in ref.items()}}, tmp_path / "cnx.pt")
    _convert_fails(tmp_path / "cnx.pt", tmp_path, "stages.2.1.pwconv1.weight")
