"""CoOp / CoCoOp: gradients vs a PyTorch re-implementation on open_clip,
chunked steps equal full steps, training learns, save/load round trip."""
import numpy as np
import pytest
import torch

import jclip
from jclip.models.clip import build_model
from jclip.heads import HEADS, load_head
from jclip.heads.cocoop import CoCoOp, load_prompt_learner
from jclip.heads.coop import CoOp, cosine_lr
from jclip.models.tokenizer import get_tokenizer, tokenize
from reference import build_reference

NAMES = ["dog", "golden retriever", "red panda"]   # 1, 2 and 2 BPE tokens


@pytest.fixture(scope="module")
def pair():
    ref, state = build_reference("tiny-vit", seed=3)
    model = build_model(state)
    return ref, model


# ---------------------------------------------------------- torch reference

def torch_prompts(ref, ctx, names, n_ctx, position):
    """CoOp's PromptLearner.forward, re-written: per class, slice the token
    embeddings of "X .. X name." into prefix / class / suffix and splice ctx in.
    ctx: (M, w) shared or (C, M, w) class-specific or per-image (see caller)."""
    tok = get_tokenizer()
    tokens = torch.from_numpy(tokenize([" ".join(["X"] * n_ctx) + " " + n + "." for n in names]))
    emb = ref.token_embedding(tokens).detach()
    out = []
    for i, n in enumerate(names):
        nl = len(tok.encode(n))
        c = ctx if ctx.dim() == 2 else ctx[i]
        prefix, cls = emb[i, :1], emb[i, 1 + n_ctx:1 + n_ctx + nl]
        suffix = emb[i, 1 + n_ctx + nl:]
        if position == "end":
            parts = [prefix, c, cls, suffix]
        elif position == "front":
            parts = [prefix, cls, c, suffix]
        else:
            h = n_ctx // 2
            parts = [prefix, c[:h], cls, c[h:], suffix]
        out.append(torch.cat(parts))
    return torch.stack(out), tokens.argmax(-1)


def torch_text(ref, prompts, eot):
    x = prompts + ref.positional_embedding
    x = ref.ln_final(ref.transformer(x, attn_mask=ref.attn_mask))
    x = x[torch.arange(len(x)), eot] @ ref.text_projection
    return x / x.norm(dim=-1, keepdim=True)


def check(got, want, name):
    scale = float(np.abs(want).max())
    assert scale > 1e-6, f"{name}: reference gradient is zero, the check would be empty"
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, scale), rtol=0, err_msg=name)


def image_batch(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.arange(n) % len(NAMES)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("position,class_specific,ctx_init", [
    ("end", False, "a photo of a"), ("middle", False, None),
    ("front", False, None), ("end", True, None), ("middle", True, "a photo of a")])
def test_coop_gradients_match_torch(pair, position, class_specific, ctx_init):
    ref, model = pair
    x, y = image_batch(5, 32)
    learner = CoOp(model, NAMES, n_ctx=4, ctx_init=ctx_init, class_specific=class_specific,
                   position=position, seed=1, epochs=0).fit(x, y)     # the initial prompts
    loss, grads, logits = learner.loss_and_grads(x, y)

    ctx = torch.tensor(learner.params_["ctx"] if class_specific else learner.params_["ctx"][0],
                       requires_grad=True)
    prompts, eot = torch_prompts(ref, ctx, NAMES, 4, position)
    text = torch_text(ref, prompts, eot)
    t_logits = ref.logit_scale.exp() * torch.from_numpy(x) @ text.t()
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y))
    t_loss.backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), atol=1e-4)
    assert abs(loss - t_loss.item()) < 1e-5
    want = ctx.grad.numpy()
    check(grads["ctx"].reshape(want.shape), want, "ctx")


def test_cocoop_gradients_match_torch(pair):
    ref, model = pair
    x, y = image_batch(4, 32, seed=1)
    learner = CoCoOp(model, NAMES, seed=2, epochs=0).fit(x, y)
    loss, grads, logits = learner.loss_and_grads(x, y)

    p = {k: torch.tensor(v, requires_grad=True) for k, v in learner.params_.items()}
    xt = torch.from_numpy(x)
    hidden = torch.relu(xt @ p["meta_net.linear1.weight"].t() + p["meta_net.linear1.bias"])
    bias = hidden @ p["meta_net.linear2.weight"].t() + p["meta_net.linear2.bias"]
    rows = []
    for b in range(len(x)):      # CoCoOp's per-image loop
        prompts, eot = torch_prompts(ref, p["ctx"][0] + bias[b], NAMES, 4, "end")
        rows.append(ref.logit_scale.exp() * torch_text(ref, prompts, eot) @ xt[b])
    t_logits = torch.stack(rows)
    torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(y)).backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), atol=1e-4)
    assert set(grads) == set(p)
    for k in p:
        check(grads[k].reshape(p[k].shape), p[k].grad.numpy(), k)


@pytest.mark.parametrize("cls", [CoOp, CoCoOp])
def test_chunked_step_equals_one_pass(pair, cls):
    """Two-pass chunking (bounded memory) gives the one-pass loss and gradients."""
    _, model = pair
    x, y = image_batch(3, 32, seed=4)
    whole = cls(model, NAMES, seed=5, epochs=0).fit(x, y).loss_and_grads(x, y)
    chunked_learner = cls(model, NAMES, seed=5, chunk_size=2, epochs=0).fit(x, y)
    assert len(chunked_learner._blocks(3, len(NAMES))) > 1
    chunked = chunked_learner.loss_and_grads(x, y)
    assert abs(whole[0] - chunked[0]) < 1e-5
    np.testing.assert_allclose(chunked[2], whole[2], atol=1e-4)
    for k in whole[1]:
        check(chunked[1][k], whole[1][k], k)


def test_schedule_is_dassl_warmup_cosine():
    assert cosine_lr(0, 10, 0.002) == 1e-5
    assert cosine_lr(1, 10, 0.002) == pytest.approx(0.001 * (1 + np.cos(np.pi / 10)))
    assert cosine_lr(9, 10, 0.002) < cosine_lr(5, 10, 0.002) < 0.002


# ----------------------------------------------------------------- learning

def separable(model, names, n_per, seed):
    """Image features whose class is a direction in text space: each class's
    features scatter around the text feature of a different random prompt."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(names), 32)).astype(np.float32)
    x = np.repeat(centres, n_per, 0) + 0.3 * rng.normal(size=(len(names) * n_per, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), \
        np.repeat(np.arange(len(names)), n_per)


@pytest.mark.parametrize("cls,kw,gain", [(CoOp, dict(class_specific=True, ctx_init=None), 0.5),
                                         (CoOp, {}, None), (CoCoOp, {}, 0.25)])
def test_training_lowers_loss_and_only_learner_changes(pair, cls, kw, gain):
    """Random class centres: class-specific context and CoCoOp fit them; a
    shared 4-vector context through a random 2-layer encoder only lowers the
    loss (the colour-dataset test in test_fewshot checks its accuracy)."""
    _, model = pair
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    x, y = separable(model, NAMES, 4, seed=6)
    start = cls(model, NAMES, seed=0, epochs=0, **kw).fit(x, y)
    zero = (start.logits(x).argmax(1) == y).mean()
    learner = cls(model, NAMES, seed=0, epochs=12, batch_size=4, lr=0.05, **kw).fit(x, y)
    losses = [h[1] for h in learner.history_]
    assert losses[-1] < 0.8 * losses[0], losses
    if gain is not None:
        assert (learner.logits(x).argmax(1) == y).mean() >= zero + gain
    assert all(not np.array_equal(start.params_[k], learner.params_[k]) for k in start.params_)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=f"CLIP weight {k} changed")


def test_save_load_round_trip_and_backbone_check(pair, tmp_path):
    ref, model = pair
    x, y = image_batch(6, 32)
    learner = CoCoOp(model, NAMES, seed=3, epochs=1, batch_size=3, lr=0.05).fit(x, y)
    learner.params_["ctx"] += 0.1
    path = learner.save(tmp_path / "cocoop.npz")
    assert (tmp_path / "cocoop.npz").stat().st_size < 200_000
    for back in (load_prompt_learner(path, model), CoCoOp(model, None).load(path),
                 load_head(path, model=model)):
        assert type(back) is CoCoOp and back.class_names_ == NAMES
        assert back.get_params()["lr"] == 0.05 and back.history_ == learner.history_
        np.testing.assert_array_equal(back.logits(x), learner.logits(x))
        new = ["cat", "tabby cat", "owl"]      # shared context transfers to new classes
        np.testing.assert_array_equal(back.logits(x, new), learner.logits(x, new))

    _, other_state = build_reference("tiny-vit", seed=4)
    other = build_model(other_state)
    with pytest.raises(ValueError, match="learned on"):
        load_prompt_learner(path, other)
    assert load_prompt_learner(path, other, check_backbone=False).class_names_ == NAMES
    with pytest.raises(ValueError, match="holds a CoCoOp head, not a CoOp"):
        CoOp(model, None).load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a file")
    with pytest.raises(ValueError, match=r"junk\.npz: not a jclip head file"):
        load_prompt_learner(tmp_path / "junk.npz", model)


def test_class_specific_context_refuses_new_classes(pair):
    _, model = pair
    learner = CoOp(model, NAMES, class_specific=True, epochs=0).fit(*image_batch(3, 32))
    assert learner.params_["ctx"].shape == (3, 4, 64)
    with pytest.raises(ValueError, match="training classes"):
        learner.logits(np.eye(32, dtype=np.float32)[:2], ["cat", "owl", "bee"])


def test_bad_inputs(pair):
    _, model = pair
    x = np.eye(32, dtype=np.float32)[:2]
    learner = CoOp(model, NAMES, position="left")      # stored as given, checked by fit
    assert learner.get_params()["position"] == "left"
    with pytest.raises(ValueError, match="position"):
        learner.fit(x, [0, 1])
    with pytest.raises(ValueError, match="labels"):
        CoOp(model, NAMES, epochs=1).fit(x, [0, 7])
    with pytest.raises(ValueError, match="dimension 5, expected 32"):
        CoOp(model, NAMES, epochs=1).fit(x[:, :5], [0, 1])
    with pytest.raises(ValueError, match="no class-specific context"):
        CoCoOp(model, NAMES, class_specific=True).fit(x, [0, 1])
    with pytest.raises(RuntimeError, match="not fitted"):
        CoOp(model, NAMES).logits(x)


def test_registry_knows_the_prompt_learners_and_their_defaults():
    assert HEADS["coop"].cls is CoOp and HEADS["cocoop"].cls is CoCoOp
    assert HEADS["coop"].needs_model and HEADS["cocoop"].transfers
    # the official configs: CoOp 50 epochs / batch 32, CoCoOp 10 epochs / batch 1
    assert (HEADS["coop"].defaults()["epochs"], HEADS["coop"].defaults()["batch_size"]) == (50, 32)
    assert (HEADS["cocoop"].defaults()["epochs"], HEADS["cocoop"].defaults()["batch_size"]) == (10, 1)
    assert set(HEADS["cocoop"].param_names()) == set(HEADS["coop"].param_names())
