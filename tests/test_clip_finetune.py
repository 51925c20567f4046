"""Contrastive CLIP fine-tuning: steps equal open_clip + torch.optim.AdamW on
the same weights, chunked steps equal one pass, learning on generated colours
and on scikit-learn's handwritten digits, seeded runs identical, the small
file on top of a base checkpoint."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jclip  # noqa: F401
from jclip.finetune.contrastive import ClipFinetune, adamw_step, symmetric_loss, trainable_names
from jclip.heads import HEADS
from jclip.models.clip import build_model
from jclip.models.tokenizer import tokenize
from jclip.weights.checkpoint import save_state_dict
from reference import build_reference, clip_loss

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
           "yellow": (1.0, 1.0, -1.0)}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def pair():
    ref, state = build_reference("tiny-vit", seed=5)
    return ref, build_model(state)


def colour_images(per_class, size, seed):
    """(N, 3, S, S) 'preprocessed' images: a noisy patch of the class colour
    on a random background."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (len(COLOURS) * per_class, 3, size, size)).astype(np.float32)
    y = np.repeat(np.arange(len(COLOURS)), per_class)
    lo, hi = size // 6, size - size // 6
    for i, c in enumerate(y):
        rgb = np.array(list(COLOURS.values())[c], np.float32)[:, None, None]
        x[i, :, lo:hi, lo:hi] = rgb + 0.3 * rng.normal(size=(3, hi - lo, hi - lo))
    return x, y


def digit_images(per_class, size, seed):
    """scikit-learn's 8x8 handwritten digits (real, offline), ``per_class``
    of each digit chosen with a seed, upscaled to ``size`` and normalised."""
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(seed)
    ids = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[:per_class] for c in range(10)])
    img = d.images[ids] / 16.0
    img = np.kron(img, np.ones((size // 8, size // 8)))           # nearest-neighbour upscale
    x = np.repeat(((img - 0.5) / 0.5)[:, None], 3, axis=1).astype(np.float32)
    return x, d.target[ids].astype(np.int64)


# ------------------------------------------------------------------- parity

def torch_steps(ref, names, x, y, class_names, template, steps, lr, learn_scale):
    """The same steps in PyTorch: open_clip's encoders, CLIP's symmetric CE
    with logit_scale, torch.optim.AdamW over exactly ``names``."""
    params = dict(ref.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    chosen = list(names) + (["logit_scale"] if learn_scale else [])
    for n in chosen:
        params[n].requires_grad_(True)
    opt = torch.optim.AdamW([params[n] for n in chosen], lr=lr, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)
    tokens = torch.from_numpy(tokenize([template.format(c) for c in class_names])).long()
    losses, after, grads = [], [], []
    for s in range(steps):
        loss = clip_loss(ref, torch.from_numpy(x[s]), tokens[torch.from_numpy(y[s])])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["logit_scale"].clamp_(0, np.log(100))
        losses.append(loss.item())
        grads.append({n: params[n].grad.numpy().copy() for n in chosen})
        after.append({n: params[n].detach().numpy().copy() for n in chosen})
    return losses, after, grads


# The attention key bias has a zero true gradient (softmax is shift-invariant),
# so Adam turns both sides' rounding noise into steps of about lr * noise / eps:
# lr 1e-4 keeps those under the 1e-5 tolerance when the last blocks train.
@pytest.mark.parametrize("trainable,learn_scale,lr", [("proj", False, 1e-3),
                                                      ("last_blocks=1", True, 1e-4)])
def test_steps_equal_open_clip_with_adamw(trainable, learn_scale, lr):
    """Two steps (AdamW moments carried) on batches with repeated classes:
    loss within 1e-5 relative, gradients, and every trained parameter within 1e-5."""
    ref, state = build_reference("tiny-vit", seed=5)
    model = build_model(state)
    names = ["dog", "cat", "red panda"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 32, 32)).astype(np.float32)
    y = np.array([[0, 1, 2, 0, 1], [2, 2, 0, 1, 0]])
    ft = ClipFinetune(model, names, trainable=trainable, learn_logit_scale=learn_scale,
                      lr=lr, epochs=0).fit(x[0], y[0])
    before = {k: v.copy() for k, v in ft.params_.items()}
    states = {k: {} for k in ft.params_}
    want_losses, want, want_grads = torch_steps(ref, [k for k in ft.params_ if k != "logit_scale"],
                                                x, y, names, ft.template, 2, lr, learn_scale)
    for s in range(2):
        loss, grads, _ = ft.loss_and_grads(x[s], y[s])
        assert abs(loss - want_losses[s]) <= 1e-5 * abs(want_losses[s]), (loss, want_losses[s])
        for k, g in grads.items():
            w = want_grads[s][k]
            np.testing.assert_allclose(g.reshape(w.shape), w, rtol=0,
                                       atol=1e-5 * max(1.0, float(np.abs(w).max())), err_msg=k)
            ft.params_[k] = adamw_step(ft.params_[k], g.astype(np.float32), states[k], lr,
                                       (0.9, 0.98), 1e-6, 0.2)
        if learn_scale:                     # open_clip's trainer clamps the scale to 100
            ft.params_["logit_scale"] = np.minimum(ft.params_["logit_scale"], np.float32(np.log(100)))
        assert set(want[s]) == set(ft.params_)
        for k, v in want[s].items():
            np.testing.assert_allclose(ft.params_[k].reshape(v.shape), v, rtol=0, atol=1e-5, err_msg=k)
    moved = max(float(np.abs(ft.params_[k] - before[k]).max()) for k in before)
    assert moved > lr, "the steps moved nothing: the comparison would be empty"
    if trainable == "proj":
        assert sorted(ft.params_) == ["text_projection", "visual.proj"]
    else:
        assert "visual.transformer.resblocks.1.attn.in_proj_weight" in ft.params_
        assert not any(k.startswith("transformer.resblocks.0.") for k in ft.params_)


def test_the_fit_loop_is_the_torch_loop(pair):
    """fit's own loop (seeded shuffling, AdamW, two epochs) equals the
    torch loop fed the same batches."""
    ref, model = pair
    x, y = colour_images(3, 32, seed=1)
    ft = ClipFinetune(model, list(COLOURS), trainable="proj", epochs=2, batch_size=5, lr=1e-3,
                      seed=4).fit(x, y)
    rng = np.random.default_rng(4)
    batches = [o[s:s + 5] for o in (rng.permutation(len(y)), rng.permutation(len(y)))
               for s in range(0, len(y), 5)]
    params = dict(ref.named_parameters())
    saved = {n: params[n].detach().clone() for n in ft.params_}
    try:
        losses, after, _ = torch_steps(ref, list(ft.params_), [x[b] for b in batches],
                                    [y[b] for b in batches], list(COLOURS), ft.template,
                                    len(batches), 1e-3, False)
    finally:
        with torch.no_grad():
            for n, v in saved.items():
                params[n].copy_(v)
    for k, v in after[-1].items():
        np.testing.assert_allclose(ft.params_[k], v, rtol=0, atol=1e-5, err_msg=k)
    sizes = [len(b) for b in batches[3:]]          # epoch 2: batches of 5, 5 and 2 images
    assert ft.history_[-1] == pytest.approx(np.average(losses[3:], weights=sizes), rel=1e-5)


def test_symmetric_loss_gradient_is_the_derivative():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    loss, da, db, dlog = symmetric_loss(a, b, 3.0)
    t = [torch.tensor(v, requires_grad=True) for v in (a, b)]
    s = torch.tensor(np.log(3.0), requires_grad=True)
    z = s.exp() * t[0] @ t[1].t()
    ref = (F.cross_entropy(z, torch.arange(4)) + F.cross_entropy(z.t(), torch.arange(4))) / 2
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(da, t[0].grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(db, t[1].grad.numpy(), atol=1e-12)
    assert dlog == pytest.approx(s.grad.item(), rel=1e-10)


def test_chunked_step_equals_one_pass(pair):
    _, model = pair
    x, y = colour_images(2, 32, seed=3)
    whole = ClipFinetune(model, list(COLOURS), trainable="last_blocks=1", epochs=0).fit(x, y)
    chunked = ClipFinetune(model, list(COLOURS), trainable="last_blocks=1", epochs=0,
                           chunk_size=3).fit(x, y)
    a, b = whole.loss_and_grads(x, y), chunked.loss_and_grads(x, y)
    assert abs(a[0] - b[0]) < 1e-6
    for k in a[1]:
        scale = float(np.abs(a[1][k]).max())
        assert scale > 0, k
        np.testing.assert_allclose(b[1][k], a[1][k], rtol=0, atol=1e-5 * max(1, scale), err_msg=k)


def test_trainable_parts_and_frozen_text(pair):
    _, model = pair
    assert trainable_names(model, "proj", train_text=False) == ["visual.proj"]
    everything = trainable_names(model, "all")
    assert "token_embedding.weight" in everything and "logit_scale" not in everything
    last = trainable_names(model, "last_blocks=2")
    assert "visual.transformer.resblocks.0.ln_1.weight" in last and "ln_final.weight" in last
    with pytest.raises(ValueError, match="last_blocks=3"):
        trainable_names(model, "last_blocks=3")
    with pytest.raises(ValueError, match="trainable must be"):
        ClipFinetune(model, ["a", "b"], trainable="head").fit(*colour_images(1, 32, 0))
    _, rn_state = build_reference("tiny-rn", seed=1)
    rn = build_model(rn_state)
    assert set(trainable_names(rn, "proj")) == {"visual.attnpool.c_proj.weight",
                                                "visual.attnpool.c_proj.bias", "text_projection"}
    assert any(".running_mean" in k for k in rn.state_dict())
    assert not any("running" in k for k in trainable_names(rn, "all"))
    rn_last = [k for k in trainable_names(rn, "last_blocks=1") if k.startswith("visual.layer")]
    assert rn_last and all(k.startswith("visual.layer4.0.") for k in rn_last)


# ------------------------------------------------------------------ learning

def test_learns_colours_leaves_the_model_alone_and_is_seeded(pair):
    _, model = pair
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    x, y = colour_images(5, 32, seed=7)
    kw = dict(trainable="proj", epochs=15, batch_size=10, lr=2e-3, seed=3)
    zero = ClipFinetune(model, list(COLOURS), epochs=0).fit(x, y).score(x, y)
    a = ClipFinetune(model, list(COLOURS), **kw).fit(x, y)
    b = ClipFinetune(model, list(COLOURS), **kw).fit(x, y)
    acc = a.score(x, y)
    assert acc >= zero + 0.4 and acc >= 0.85, (zero, acc)
    assert a.history_[-1] < 0.7 * a.history_[0]
    assert a.history_ == b.history_
    for k in a.params_:
        np.testing.assert_array_equal(a.params_[k], b.params_[k])
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=f"CLIP weight {k} changed")
    # frozen text side: only the image projection moves, and the text weights stay CLIP's
    img_only = ClipFinetune(model, list(COLOURS), train_text=False, **kw).fit(x, y)
    assert list(img_only.params_) == ["visual.proj"]
    np.testing.assert_allclose(img_only.text_weights(), zero_text(model), atol=1e-6)


def zero_text(model):
    return jclip.encode_texts(model, [f"a photo of a {c}." for c in COLOURS])


@pytest.mark.slow
def test_learns_real_handwritten_digits():
    """The MNIST recipe's shape on scikit-learn's real digits: 5 images x 10
    classes, batch 10, 20 epochs; a tiny random CLIP starts at chance (10%)
    and its projections alone reach ~38% (the random 2-block trunk's limit)."""
    _, state = build_reference("tiny-vit", seed=2)
    model = build_model(state)
    x, y = digit_images(5, 32, seed=0)
    zero = ClipFinetune(model, DIGITS, epochs=0).fit(x, y).score(x, y)
    runs = [ClipFinetune(model, DIGITS, trainable="proj", epochs=20, batch_size=10, lr=1e-2,
                         seed=1).fit(x, y) for _ in range(2)]
    acc = runs[0].score(x, y)
    assert acc >= zero + 0.2 and acc >= 0.3, (zero, acc)
    np.testing.assert_array_equal(runs[0].logits(x), runs[1].logits(x))


# --------------------------------------------------------------------- files

def test_save_load_small_file_on_its_base(pair, tmp_path):
    _, model = pair
    x, y = colour_images(2, 32, seed=9)
    ft = ClipFinetune(model, list(COLOURS), trainable="proj", learn_logit_scale=True, epochs=1,
                      batch_size=4, lr=1e-2, seed=1).fit(x, y)
    path = ft.save(tmp_path / "ft.safetensors")
    assert (tmp_path / "ft.safetensors").stat().st_size < 64 * 1024
    back = ClipFinetune(model, None).load(path)
    assert back.get_params()["lr"] == 1e-2 and back.class_names_ == list(COLOURS)
    assert back.history_ == ft.history_
    np.testing.assert_array_equal(back.logits(x), ft.logits(x))

    _, other_state = build_reference("tiny-vit", seed=6)
    other = build_model(other_state)
    with pytest.raises(ValueError, match="trained on"):
        ClipFinetune(other, None).load(path)
    assert ClipFinetune(other, None).load(path, check_identity=False).class_names_ == list(COLOURS)
    weights = tmp_path / "base.safetensors"
    save_state_dict(weights, {k: v.numpy() for k, v in model.state_dict().items()}, {"model": "t"})
    with pytest.raises(ValueError, match="not a clip_finetune file"):
        ClipFinetune(model, None).load(weights)


def test_registry_and_bad_inputs(pair):
    _, model = pair
    spec = HEADS["clip_finetune"]
    assert spec.cls is ClipFinetune and spec.needs_model and spec.needs_images and spec.transfers
    assert spec.defaults()["trainable"] == "proj" and spec.defaults()["epochs"] == 20
    x, y = colour_images(1, 32, 0)
    with pytest.raises(ValueError, match=r"\(N, 3, S, S\)"):
        ClipFinetune(model, list(COLOURS)).fit(x[:, 0], y)
    with pytest.raises(ValueError, match="array of 4 labels"):
        ClipFinetune(model, list(COLOURS)).fit(x, y[:3])
    with pytest.raises(ValueError, match="template"):
        ClipFinetune(model, list(COLOURS), template="a photo").fit(x, y)
    with pytest.raises(RuntimeError, match="not fitted"):
        ClipFinetune(model, list(COLOURS)).logits(x)
