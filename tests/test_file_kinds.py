"""One row per kind of model file jclip writes: every head in HEADS, the dog
head, ClipFinetune, weights with their meta.  Each valid file is mutated by
tests/file_kinds.py (every key removed, every type swapped, every array
truncated / NaN-ed / reshaped / re-typed, truncations, a forged 8 GiB array
header) and every mutant must be refused in one line naming the file (and
the key), under RLIMIT_AS = 1 GiB.  Plus: heads round-trip every declared
fitted attribute and their logits bit for bit, identity is checked (load by
name, convert --name), and the harness catches a planted lax reader.
"""
import os

import numpy as np
import pytest

from file_kinds import FileKind, NpzHeader, Safetensors, check_kind

C, D, N = 3, 8, 12
# Every reader runs under 1 GiB (CoOp's and CoCoOp's import Jittor; the dog
# head's and ClipFinetune's, jclip.finetune.files, import no model code).
FINETUNE_AS = 1 << 30
NAMES = ["dog", "golden retriever", "red panda"]


def _data(seed=0):
    from jclip.heads import l2_normalize
    rng = np.random.default_rng(seed)
    t = l2_normalize(rng.normal(size=(C, D))).astype(np.float32)
    x = l2_normalize(rng.normal(size=(N, D)) + 2 * t[np.arange(N) % C]).astype(np.float32)
    return t, x, np.arange(N) % C


@pytest.fixture(scope="module")
def tiny_clip():
    pytest.importorskip("torch")
    from reference import build_reference
    from jclip.models.clip import build_model
    return build_model(build_reference("tiny-vit", seed=3)[1])


def fitted(method, model=None):
    """A fitted head of ``method`` on tiny data (with a validation split where it takes one)."""
    from jclip.heads import HEADS
    spec = HEADS[method]
    t, x, y = _data()
    if method == "clip_finetune":
        rng = np.random.default_rng(1)
        images = rng.uniform(-1, 1, size=(6, 3, model.input_resolution, model.input_resolution)).astype(np.float32)
        return spec.cls(model, NAMES, epochs=1, batch_size=3).fit(images, np.arange(6) % C), images
    if spec.needs_model:
        from jclip.heads import l2_normalize
        feats = l2_normalize(np.random.default_rng(2).normal(size=(N, int(model.text_projection.shape[1])))
                             ).astype(np.float32)
        return spec.cls(model, NAMES, epochs=1, batch_size=4).fit(feats, y, feats, y), feats
    extra = {"epochs": 3} if method in ("lpp", "tip_adapter_f") else {}
    if method == "inmap":
        extra = {"iters": 6, "snapshots": (2, 4)}
    if method in ("transclip", "zlap"):
        from jclip.heads import InMaP
        extra = {"init": InMaP(text_weights=t, iters=4).fit(x)}
    kw = {"text_weights": t} if spec.needs_text else {}
    head = spec.cls(**kw, **extra)
    if spec.name in ("zeroshot", "transclip_zs", "zlap"):
        return head.fit(x), x
    return head.fit(x, y, x, y), x


def _methods():
    from jclip.heads import HEADS
    return list(HEADS)


def _model_for(method, request):
    from jclip.heads import HEADS
    return request.getfixturevalue("tiny_clip") if HEADS[method].needs_model else None


def _equal(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and \
            np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(i, j) for i, j in zip(a, b))
    return a == b and type(a) is type(b) or (isinstance(a, float) and a == b)


# ------------------------------------------------------------- round trip

@pytest.mark.parametrize("method", _methods())
def test_every_head_round_trips(method, request, tmp_path):
    """save -> load restores every declared fitted attribute (and the
    declarations cover every public fitted attribute), logits bit for bit."""
    from jclip.heads import load_head
    model = _model_for(method, request)
    head, x = fitted(method, model)
    cls = type(head)
    public = {k for k in vars(head) if k.endswith("_") and not k.startswith("_")}
    undeclared = public - set(cls.fitted_spec) - {"table_"}
    assert not undeclared, f"{cls.__name__}: fitted attributes not declared in fitted_spec: {undeclared}"
    suffix = ".safetensors" if method == "clip_finetune" else ".npz"
    path = head.save(tmp_path / f"head{suffix}")
    back = load_head(path, model)
    assert type(back) is cls
    for k in cls.fitted_spec:
        assert _equal(getattr(head, k, None), getattr(back, k)), f"{cls.__name__}.{k} differs after load"
    for k, v in head.get_params().items():
        if k not in cls._unsaved_params + cls._head_params:
            w = back.get_params()[k]
            if isinstance(v, (list, tuple)):        # sequence hyper-parameters come back as tuples
                v, w = list(v), list(w)
            assert _equal(v, w) or v == w, k
    assert np.array_equal(head.logits(x), back.logits(x))


# ------------------------------------------------------------- the table

def _head_kind(method, model):
    def make(folder):
        os.makedirs(folder, exist_ok=True)
        return fitted(method, model)[0].save(os.path.join(folder, "head.npz"))
    return make


# an integer in a list of floats (ProKeR's grids end in 20): a larger or a
# fractional number is as valid
EXTRA_TOLERATED = {"proker": ["header:params.*_grid[[]*[]]:huge", "header:params.*_grid[[]*[]]:float"]}
# a prompt learner's parameter shapes come from the CLIP it is loaded onto
# (checked by load, test_prompt_learning), not from the file alone
for _m in ("coop", "cocoop"):
    EXTRA_TOLERATED[_m] = ["array:fitted/params_/*:truncate", "array:fitted/params_/*:reshape"]


def _tolerated(cls, head=None):
    """Mutants a head file may accept: a fitted attribute that may be None
    removed or nulled (older files, heads fitted without a validation split)."""
    from jclip.heads.head_file import MaybeArray
    from jclip.file_schema import Null, OneOf
    out = []
    for k, spec in cls.fitted_spec.items():
        if isinstance(spec, OneOf) and any(isinstance(s, Null) for s in spec.specs):
            out += [f"header:fitted.{k}:removed", f"header:fitted.{k}:null"]
        if isinstance(spec, MaybeArray):
            out += [f"header:fitted.{k}:removed"]
    # a dropped row of the only array holding that dimension leaves a consistent
    # file (ZeroShot's text_weights_ with one class fewer): nothing can tell
    from jclip.file_schema import Array
    arrays = {k: (s.array if isinstance(s, MaybeArray) else s) for k, s in cls.fitted_spec.items()
              if isinstance(s, (Array, MaybeArray)) and (head is None or getattr(head, k) is not None)}
    for k, a in arrays.items():
        if a.shape and isinstance(a.shape[0], str) and sum(
                a.shape[0] in (b.shape or ()) for b in arrays.values()) == 1:
            out.append(f"array:fitted/{k}:truncate")
    # null where a hyper-parameter's default is None
    from jclip.heads.head_file import saved_params
    defaults = cls.param_defaults()
    from jclip.heads.head_file import _param_spec
    for n in saved_params(cls):
        try:
            _param_spec(cls, n, defaults.get(n)).check(None, n)
            out.append(f"header:params.{n}:null")
        except Exception:               # the spec refuses null: the mutant must be refused
            pass
    if cls._head_params and head is not None and getattr(head, cls._head_params[0]) is not None:
        start = type(getattr(head, cls._head_params[0]))
        out += [f"header:start_head.{p[len('header:'):]}" for p in _tolerated(start)
                if p.startswith("header:")]
    return out


@pytest.mark.parametrize("method", [m for m in _methods() if m != "clip_finetune"])
def test_head_file_mutants_refused(method, request, tmp_path):
    from jclip.heads import HEADS
    model = _model_for(method, request)
    cls = HEADS[method].cls
    kind = FileKind(f"{method} head", _head_kind(method, model), "jclip.heads.registry:check_head_file",
                    NpzHeader(), tolerate=_tolerated(cls, fitted(method, model)[0]) + EXTRA_TOLERATED.get(method, []))
    kind.tolerate = _applicable(kind, tmp_path / "probe")
    problems = check_kind(kind, tmp_path)
    assert not problems, "\n".join(problems)


def _applicable(kind, folder):
    """The kind's tolerate patterns that match a mutant of its valid file (the
    rest would be reported as stale)."""
    import fnmatch
    from file_kinds import mutants
    with open(kind.make(str(folder)), "rb") as f:
        ids = [m.id for m in mutants(f.read(), kind.codec)]
    return [p for p in kind.tolerate if any(fnmatch.fnmatchcase(i, p) for i in ids)]


def test_clip_finetune_file_mutants_refused(tiny_clip, tmp_path):
    def make(folder):
        os.makedirs(folder, exist_ok=True)
        return fitted("clip_finetune", tiny_clip)[0].save(os.path.join(folder, "ft.safetensors"))
    kind = FileKind("clip_finetune", make, "jclip.finetune.files:check_clip_finetune_file",
                    Safetensors(json_values=("jclip_meta",)), address_space=FINETUNE_AS,
                    tolerate=[NO_CHECKSUM, "array:fitted/params_/*:truncate", "array:fitted/params_/*:reshape"])
    problems = check_kind(kind, tmp_path)
    assert not problems, "\n".join(problems)


# files written before the data checksum existed carry none (it is checked
# whenever present: safetensors_io)
NO_CHECKSUM = "header:jclip_data_sha256:removed"


def _dog_head(folder, drop=None):
    from jclip.catalog import get_card, state_dict_layout
    from jclip.weights.checkpoint import save_state_dict
    os.makedirs(folder, exist_ok=True)
    layout = state_dict_layout(get_card("convnextv2_atto").architecture, 4)
    rng = np.random.default_rng(0)
    state = {k: rng.normal(size=s).astype(np.float32) for k, s in layout.items() if k.startswith("head.")}
    if drop:
        del state[drop]
    meta = {"backbone": "atto", "backbone_sha256": "a" * 64, "num_classes": 4, "offset": 10, "unfreeze": 0,
            "size": 32, "mode": "linear", "epoch": 2, "epochs": 2, "seed": 1, "val_acc": "0.5000"}
    path = os.path.join(folder, "dog_head.safetensors")
    save_state_dict(path, state, meta)
    return path


def test_dog_head_mutants_refused(tmp_path):
    kind = FileKind("dog head", _dog_head, "jclip.finetune.files:read_dog_head",
                    Safetensors(json_values=("jclip_meta",)),
                    tolerate=["header:jclip_meta.val_acc:removed", NO_CHECKSUM],
                    address_space=FINETUNE_AS)
    problems = check_kind(kind, tmp_path)
    assert not problems, "\n".join(problems)


def test_dog_head_without_head_weight_refused_in_one_line(tmp_path):
    from jclip.finetune.files import read_dog_head
    from jclip.file_schema import FileFormatError
    path = _dog_head(str(tmp_path / "a"), drop="head.weight")
    with pytest.raises(FileFormatError, match=r"dog_head\.safetensors: head\.weight: missing array"):
        read_dog_head(path)
    path = _dog_head(str(tmp_path / "b"))                 # save_state_dict refuses a NaN: plant it
    codec = Safetensors(json_values=("jclip_meta",))
    with open(path, "rb") as f:
        meta, arrays = codec.decode(f.read())
    arrays = dict(arrays, **{"head.weight": np.where(arrays["head.weight"] > 0, np.nan, arrays["head.weight"])})
    with open(path, "wb") as f:
        f.write(codec.encode(meta, arrays))
    with pytest.raises(ValueError, match=r"dog_head\.safetensors: .*head\.weight.* NaN") as e:
        read_dog_head(path)
    assert "\n" not in str(e.value)


def _weights_file(folder, model="ViT-B/32"):
    from jclip.weights.checkpoint import save_state_dict
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "w.safetensors")
    rng = np.random.default_rng(0)
    save_state_dict(path, {"visual.proj": rng.normal(size=(4, 3)).astype(np.float32),
                           "logit_scale": np.array(4.6, np.float32)},
                    {"model": model, "architecture": "ViT-B-32", "source_file": "ViT-B-32.pt",
                     "source_sha256": "b" * 64, "source_format": "torchscript"})
    return path


def test_weights_meta_mutants_refused(tmp_path):
    # The readable copies beside the typed meta (model, architecture,
    # source_sha256) are informational; a weights file's tensors are checked
    # against the architecture when the model is built (convert, jclip.load),
    # not by the generic reader: those array mutants load here.
    kind = FileKind("weights meta", _weights_file, "jclip.weights.checkpoint:read_state_dict",
                    Safetensors(json_values=("jclip_meta",)),
                    tolerate=["header:model:removed", "header:architecture:removed",
                              "header:source_sha256:removed", "array:*:removed", "array:*:truncate",
                              "array:*:reshape", "array:*:retype", NO_CHECKSUM,
                              # without jclip's meta (or its architecture) the file is any
                              # safetensors state dict, which jclip.load also reads
                              "header::null", "header:jclip_meta:removed", "header:jclip_meta.architecture:removed"])
    kind.tolerate = _applicable(kind, tmp_path / "probe")
    problems = check_kind(kind, tmp_path)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------- identity

def test_load_by_name_refuses_a_file_of_another_model(tmp_path):
    import jclip
    from jclip.catalog import get_card
    path = _weights_file(str(tmp_path), model="RN101")
    os.rename(path, tmp_path / get_card("ViT-B/32").weights_filename())
    with pytest.raises(ValueError, match=r"holds RN101, not ViT-B/32") as e:
        jclip.load("ViT-B/32", weights=str(tmp_path))
    assert "\n" not in str(e.value)


def test_convert_refuses_a_state_dict_that_is_not_the_named_model(tmp_path):
    pytest.importorskip("torch")
    from reference import build_reference
    from jclip.weights.checkpoint import CheckpointError, save_state_dict
    from jclip.weights.convert import convert_checkpoint
    src = tmp_path / "tiny.safetensors"
    save_state_dict(src, build_reference("tiny-vit", seed=0)[1], {"model": "tiny"})
    out = tmp_path / "out" / "ViT-B-32.safetensors"
    out.parent.mkdir()
    with pytest.raises(CheckpointError, match=r"tiny\.safetensors: does not fit ViT-B-32/laion2b_s34b_b79k: "):
        convert_checkpoint(src, out, model="ViT-B-32/laion2b_s34b_b79k")
    assert os.listdir(out.parent) == []
    convert_checkpoint(src, out, model="tiny")          # a free name has nothing to fit
    assert out.exists()


# ------------------------------------------------------------- the harness itself

def lax_head_reader(path):
    """A planted bug: reads a head file's header and arrays without any check."""
    import json
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    return meta["head"], arrays


def test_harness_reports_a_lax_reader(tmp_path):
    kind = FileKind("lax", _head_kind("lpp", None), "test_file_kinds:lax_head_reader", NpzHeader())
    problems = check_kind(kind, tmp_path)
    assert any("array:fitted/weight_:nan: accepted" in p for p in problems)
    assert any("header:params.epochs:removed: accepted" in p for p in problems)
    assert any("header:head:removed" in p and "KeyError" in p for p in problems)
