"""Multi-task episodic CoCoOp: the sampler draws exactly N x K, class-disjoint
splits refuse a test class in training, one multi-task CoCoOp step equals a
PyTorch CoCoOp step on the same episode, evaluation is all-way over the test
split, and the CLI runs the recipe end to end."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import jclip  # noqa: F401
from jclip.fewshot import cli
from jclip.fewshot.datasets import DatasetError, load_class_splits, split_root
from jclip.fewshot.episodic import evaluate, format_episodic, nearest_centroid_logits, summarise_episodic
from jclip.heads.cocoop import CoCoOp
from jclip.heads.coop import CoOp
from jclip.heads.episodes import check_episode_data, parse_episode, sample_episode
from jclip.metrics import mean_ci95
from jclip.models.clip import build_model
from jclip.weights.checkpoint import save_state_dict
from reference import build_reference
from test_prompt_learning import check, torch_prompts, torch_text

CLASSES = ["dog", "cat", "owl", "red panda", "golden retriever", "tabby cat", "bee"]


# ------------------------------------------------------------------ sampler

@pytest.mark.parametrize("text,want", [("5-way 1-shot", (5, 1)), ("5-way-1-shot", (5, 1)),
                                       ("20 way 5 shot", (20, 5)), ("3 2", (3, 2)), ((4, 1), (4, 1))])
def test_parse_episode(text, want):
    assert parse_episode(text) == want


@pytest.mark.parametrize("bad", ["five-way", "0-way 1-shot", "5-way 0-shot", (5,), "x"])
def test_parse_episode_refuses(bad):
    with pytest.raises(ValueError, match="episode"):
        parse_episode(bad)


def test_sampler_draws_exactly_n_classes_by_k_images():
    labels = np.repeat(np.arange(9), 6)
    seen = set()
    for e in range(50):
        ep = sample_episode(labels, 5, 2, np.random.default_rng([3, e]), query=3)
        assert len(ep.classes) == len(set(ep.classes.tolist())) == 5
        assert len(ep.support) == 10 and len(ep.query) == 15
        np.testing.assert_array_equal(labels[ep.support], np.repeat(ep.classes, 2))
        np.testing.assert_array_equal(ep.classes[ep.support_labels], labels[ep.support])
        np.testing.assert_array_equal(ep.classes[ep.query_labels], labels[ep.query])
        assert not set(ep.support) & set(ep.query)
        seen |= set(ep.classes.tolist())
    assert seen == set(range(9))
    a = sample_episode(labels, 5, 1, np.random.default_rng(1))
    b = sample_episode(labels, 5, 1, np.random.default_rng(1))
    np.testing.assert_array_equal(a.support, b.support)
    rest = sample_episode(labels, 9, 1, np.random.default_rng(0), query=None)
    assert len(rest.query) == 9 * 5                       # all the rest of every class
    with pytest.raises(ValueError, match="needs 10 classes, there are 9"):
        check_episode_data(labels, 10, 1)
    with pytest.raises(ValueError, match="fewer than 7 images"):
        check_episode_data(labels, 5, 7)


def test_metrics_interval_and_nearest_centroid():
    mean, ci = mean_ci95([60.0, 70.0, 80.0, 70.0])
    assert mean == 70.0 and ci == pytest.approx(1.96 * np.std([60, 70, 80, 70], ddof=1) / 2)
    assert mean_ci95([5.0]) == (5.0, 0.0)
    support = np.array([[1.0, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 1]])
    logits = nearest_centroid_logits(support, [0, 0, 1, 2], np.array([[1.0, 0.2, 0], [0, 0.1, 1]]), 3)
    centre = np.array([1.8, 0.6, 0]) / np.linalg.norm([1.8, 0.6, 0])
    assert logits[0, 0] == pytest.approx(centre @ np.array([1.0, 0.2, 0]) / np.linalg.norm([1.0, 0.2, 0]))
    assert logits.argmax(1).tolist() == [0, 2]


def test_all_way_evaluation_uses_every_test_class():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    labels = np.repeat(np.arange(6), 5)
    x = centres[labels] + 0.05 * rng.normal(size=(30, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perfect = np.eye(6)[labels] * 10.0                    # a text classifier that is always right
    rows = evaluate(x, labels, {"zeroshot": perfect, "cocoop": -perfect}, None, 1, None, 3, seed=1)
    assert {r["way"] for r in rows} == {6} and {r["queries"] for r in rows} == {24}
    acc = {(r["classifier"], r["episode"]): r["top1"] for r in rows}
    assert all(acc[("zeroshot", e)] == 100.0 and acc[("centroid", e)] == 100.0 for e in range(3))
    assert all(acc[("cocoop", e)] == 0.0 for e in range(3))
    five = evaluate(x, labels, {"zeroshot": perfect}, 5, 2, 2, 2, seed=1)
    assert {r["way"] for r in five} == {5} and {r["queries"] for r in five} == {10}
    with pytest.raises(ValueError, match="needs 7 classes"):
        evaluate(x, labels, {}, 7, 1, None, 1, seed=0)


# ------------------------------------------------------------------ splits

def make_splits(root, classes, per_class=3, seed=0, layout=("train", "val", "test")):
    """root/<split>/<class>/<i>.png with a class colour each (random per class)."""
    rng = np.random.default_rng(seed)
    for split, names in zip(layout, classes):
        for name in names:
            rgb = rng.integers(0, 256, 3)
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 256, (24, 24, 3)).astype(np.float64)
                img[4:20, 4:20] = rgb + rng.normal(0, 15, (16, 16, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


SPLIT_CLASSES = (["c0", "c1", "c2", "c3", "c4", "c5"], ["v0", "v1"], ["t0", "t1", "t2", "t3"])


def test_split_root_and_class_disjoint_splits(tmp_path):
    root = make_splits(tmp_path / "tiered", SPLIT_CLASSES, per_class=1)
    roots = split_root(str(root))
    assert set(roots) == {"train", "val", "test"}
    splits = load_class_splits(roots["train"], roots["test"], roots["val"])
    assert splits.train.class_names == SPLIT_CLASSES[0] and len(splits.test.paths) == 4
    assert split_root(str(root / "train")) is None                 # an ordinary ROOT/<class> folder
    # a test class planted in the train split is refused, naming both
    make_splits(tmp_path / "tiered", (["t2"],), per_class=1, seed=1, layout=("train",))
    with pytest.raises(DatasetError, match=r"train: class\(es\) t2 are also test classes"):
        load_class_splits(roots["train"], roots["test"], roots["val"])
    with pytest.raises(DatasetError, match="also val classes"):
        load_class_splits(roots["val"], roots["test"], roots["val"])


def test_cli_refuses_a_test_class_in_training(tmp_path, capsys):
    root = make_splits(tmp_path / "d", (["a", "b", "t"], ["t", "u"]), per_class=1, layout=("train", "test"))
    code = cli.main(["--train-classes", str(root / "train"), "--test-classes", str(root / "test"),
                     "--model", "x.pkl"])
    assert code == 2 and "class-disjoint" in capsys.readouterr().err
    assert cli.main(["--train-classes", str(root / "train"), "--model", "x.pkl"]) == 2
    assert "both --train-classes and --test-classes" in capsys.readouterr().err


# ------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def pair():
    ref, state = build_reference("tiny-vit", seed=3)
    return ref, build_model(state)


def test_multitask_cocoop_step_matches_torch(pair):
    """One step on a 5-way 1-shot episode drawn from 7 training classes:
    CoCoOp's official forward (meta-net bias per image, its 5 classes'
    prompts) in PyTorch gives the same loss, logits and gradients."""
    ref, model = pair
    rng = np.random.default_rng(0)
    x = rng.normal(size=(14, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(np.arange(7), 2)
    learner = CoCoOp(model, CLASSES, seed=2, epochs=0, episode="5-way 1-shot").fit(x, y)
    ep = sample_episode(y, 5, 1, np.random.default_rng(4))
    loss, grads, logits = learner.loss_and_grads(x[ep.support], ep.support_labels, ep.classes)
    assert logits.shape == (5, 5)

    p = {k: torch.tensor(v, requires_grad=True) for k, v in learner.params_.items()}
    xt = torch.from_numpy(x[ep.support])
    hidden = torch.relu(xt @ p["meta_net.linear1.weight"].t() + p["meta_net.linear1.bias"])
    bias = hidden @ p["meta_net.linear2.weight"].t() + p["meta_net.linear2.bias"]
    names = [CLASSES[c] for c in ep.classes]
    rows = []
    for b in range(len(xt)):
        prompts, eot = torch_prompts(ref, p["ctx"][0] + bias[b], names, 4, "end")
        rows.append(ref.logit_scale.exp() * torch_text(ref, prompts, eot) @ xt[b])
    t_logits = torch.stack(rows)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(ep.support_labels))
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= 1e-5 * abs(t_loss.item())
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), atol=1e-4)
    for k in p:
        check(grads[k].reshape(p[k].shape), p[k].grad.numpy(), k)
    # the same step in two chunks (bounded memory) is the same step
    chunked = CoCoOp(model, CLASSES, seed=2, epochs=0, chunk_size=3).fit(x, y)
    c_loss, c_grads, _ = chunked.loss_and_grads(x[ep.support], ep.support_labels, ep.classes)
    assert abs(c_loss - loss) < 1e-5
    for k in grads:
        check(c_grads[k], grads[k], k)


@pytest.mark.parametrize("cls", [CoOp, CoCoOp])
def test_episodic_fit_draws_tasks_from_train_classes_and_picks_the_epoch(pair, cls, monkeypatch):
    _, model = pair
    rng = np.random.default_rng(1)
    x = rng.normal(size=(21, 32)).astype(np.float32)
    y = np.repeat(np.arange(7), 3)
    vx = rng.normal(size=(6, 32)).astype(np.float32)
    calls = []
    real = cls.loss_and_grads

    def spy(self, features, labels, class_ids=None):
        calls.append((len(features), np.asarray(labels).copy(), np.asarray(class_ids).copy()))
        return real(self, features, labels, class_ids)
    monkeypatch.setattr(cls, "loss_and_grads", spy)
    learner = cls(model, CLASSES, epochs=3, episode=(5, 2), episodes_per_epoch=2, lr=0.05, seed=3,
                  val_class_names=["zebra", "okapi", "heron"]).fit(x, y, vx, [0, 1, 2, 0, 1, 2])
    assert len(calls) == 3 * 2
    for n, labels, classes in calls:
        assert n == 10 and sorted(labels.tolist()) == sorted(list(range(5)) * 2)
        assert len(set(classes.tolist())) == 5 and set(classes.tolist()) <= set(range(7))
    assert len(learner.val_history_) == 4 and 0 <= learner.best_epoch_ <= 3
    assert learner.val_history_[learner.best_epoch_] == max(learner.val_history_)
    assert learner.val_history_.index(max(learner.val_history_)) == learner.best_epoch_
    again = cls(model, CLASSES, epochs=3, episode=(5, 2), episodes_per_epoch=2, lr=0.05, seed=3,
                val_class_names=["zebra", "okapi", "heron"]).fit(x, y, vx, [0, 1, 2, 0, 1, 2])
    for k in learner.params_:
        np.testing.assert_array_equal(learner.params_[k], again.params_[k])
    with pytest.raises(ValueError, match="fewer than 4 images"):
        cls(model, CLASSES, epochs=1, episode="5-way 4-shot").fit(x, y)


# ------------------------------------------------------------------ CLI

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    _, state = build_reference("tiny-vit", seed=11)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_state_dict(path, state, {"model": "tiny-vit"})
    return str(path)


def test_cli_episodic_recipe_end_to_end(tmp_path, tiny_model, capsys):
    root = make_splits(tmp_path / "tiered", SPLIT_CLASSES, per_class=3)
    out = tmp_path / "out"
    argv = ["--data", str(root), "--model", tiny_model, "--methods", "coop", "cocoop",
            "--episode", "5-way", "1-shot", "--coop-epochs", "2", "--cocoop-epochs", "2",
            "--episodes-per-epoch", "2", "--eval-way", "all", "--support", "1", "--eval-episodes", "2",
            "--seeds", "1", "2", "--output", str(out), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "Nearest centroid" in printed and "±" in printed
    with open(out / "episodic.csv") as f:
        rows = list(csv.DictReader(f))
    # 2 seeds x 2 episodes x (zero-shot, centroid, coop, cocoop)
    assert len(rows) == 16 and {r["way"] for r in rows} == {"4"}          # all 4 test classes
    assert {(r["method"], r["stage"]) for r in rows} == {("zeroshot", "before"), ("centroid", "before"),
                                                         ("coop", "after"), ("cocoop", "after")}
    assert {r["queries"] for r in rows} == {"8"}                           # 4 x (3 - 1 support)
    run = json.loads((out / "run.json").read_text())
    assert run["episode"] == [5, 1] and run["hyper_parameters"]["cocoop"]["episodes_per_epoch"] == 2
    assert sorted(os.listdir(out / "prompts")) == sorted(f"{m}-episodic-seed{s}.npz"
                                                         for m in ("coop", "cocoop") for s in (1, 2))
    table = summarise_episodic([dict(r, top1=float(r["top1"]), way=int(r["way"])) for r in rows])
    assert {t["n"] for t in table} == {4}
    assert "top-1 (95% CI)" in format_episodic([dict(r, top1=float(r["top1"])) for r in rows])
    # clip_finetune is not an episodic method
    assert cli.main(argv[:4] + ["--methods", "clip_finetune", "--output", str(out)]) == 2
    assert "episodic training supports" in capsys.readouterr().err


def test_an_unreadable_image_of_any_split_is_named_and_skipped(capsys):
    from jclip.fewshot.datasets import Split
    from jclip.fewshot.episodic import readable_splits
    x = np.eye(4, dtype=np.float32)
    tr = Split("train", ["a", "b"], ["t0.jpg", "t1.jpg", "t2.jpg", "t3.jpg"], np.array([0, 0, 1, 1]))
    te = Split("test", ["c", "d"], ["q0.jpg", "q1.jpg", "q2.jpg", "q3.jpg"], np.array([0, 0, 1, 1]))
    val_x = x.copy()
    val_x[2] = 0                                       # the encoder's mark of an undecodable image
    val = (["v0.jpg", "v1.jpg", "v2.jpg", "v3.jpg"], np.array([0, 0, 1, 1]), val_x)
    *_, (vx, vy) = readable_splits(tr, x, te, x, val, {"v2.jpg": "cannot identify image file"})
    err = capsys.readouterr().err
    assert "warning: v2.jpg: unreadable image (cannot identify image file); skipped" in err
    assert "val classes: 1 unreadable image(s) skipped" in err
    np.testing.assert_array_equal(vx, x[[0, 1, 3]])
    np.testing.assert_array_equal(vy, [0, 0, 1])
