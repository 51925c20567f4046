"""ConvNeXt-V2 parity with timm (PyTorch, test-only) on shared random weights."""
import numpy as np
import pytest

import jclip  # noqa: F401  (must precede jittor)
import jittor as jt

from jclip.models.convnext import CONFIGS, convnextv2, count_parameters, infer_config, load_convnextv2, load_state_dict, timm_to_official

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")


def _timm_model(name, seed):
    """timm ConvNeXt-V2 with every parameter randomised, incl. LN and GRN."""
    torch.manual_seed(seed)
    m = timm.create_model(f"convnextv2_{name}", pretrained=False).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in m.named_parameters():
            if k.endswith(("norm.weight", "downsample.0.weight", "stem.1.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".grn." in k:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif k.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return m


def _numpy_sd(m):
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def _compare(name, res, seed=0):
    ref = _timm_model(name, seed)
    x = np.random.RandomState(seed).randn(2, 3, res, res).astype(np.float32)
    with torch.no_grad():
        tx = torch.from_numpy(x)
        ref_feat = ref.forward_head(ref.forward_features(tx), pre_logits=True).numpy()
        ref_logits = ref(tx).numpy()
    model = load_convnextv2(timm_to_official(_numpy_sd(ref)))
    assert model.name == name
    with jt.no_grad():
        feat = model.forward_features(jt.array(x)).numpy()
        logits = model.head(jt.array(feat)).numpy()
    cos = (feat * ref_feat).sum(1) / (np.linalg.norm(feat, axis=1) *
                                      np.linalg.norm(ref_feat, axis=1))
    rel = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
    print(f"{name}@{res}: feature cosine min {cos.min():.8f}, "
          f"logits max|diff|/max|ref| {rel:.2e}")
    assert cos.min() >= 0.99999, cos
    assert rel <= 1e-4, rel
    return ref, model


def test_parity_atto_and_both_namings():
    ref, model = _compare("atto", 64)
    sd = _numpy_sd(ref)
    # timm naming straight in gives the same weights as the converted dict
    model2 = load_convnextv2(sd)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), model2.state_dict()[k].numpy(), err_msg=k)
    official = timm_to_official(sd)
    assert official["stages.0.0.grn.gamma"].shape == (1, 1, 1, 160)
    assert official["stages.0.0.pwconv1.weight"].shape == (160, 40)
    assert "head.weight" in official and "norm.weight" in official


@pytest.mark.slow
def test_parity_base():
    _compare("base", 224, seed=1)


def test_base_parameter_count_and_configs():
    assert count_parameters(convnextv2("base")) == 88_717_800
    # each configuration round-trips through infer_config
    for name in ("atto", "nano", "tiny"):
        sd = {k: v.numpy() for k, v in convnextv2(name, num_classes=7).state_dict().items()}
        assert infer_config(sd) == (name, *CONFIGS[name], 7)


def test_load_reports_bad_keys_by_name():
    sd = {k: v.numpy() for k, v in convnextv2("atto").state_dict().items()}
    broken = dict(sd)
    del broken["stages.1.0.grn.gamma"]
    broken["stages.2.0.pwconv1.weight"] = np.zeros((3, 3), np.float32)
    broken["extra.thing"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as e:
        load_state_dict(convnextv2("atto"), broken, source="bad.pkl")
    msg = str(e.value)
    for part in ("bad.pkl", "stages.1.0.grn.gamma", "stages.2.0.pwconv1.weight",
                 "extra.thing", "missing", "unexpected", "mis-shaped"):
        assert part in msg, (part, msg)
    with pytest.raises(ValueError, match="not 'base'"):
        load_convnextv2(sd, name="base")


def test_new_head_keeps_backbone():
    sd = {k: v.numpy() for k, v in convnextv2("atto").state_dict().items()}
    m = load_convnextv2(sd, num_classes=5)
    assert tuple(m.head.weight.shape) == (5, 320)
    np.testing.assert_array_equal(m.state_dict()["stages.3.1.pwconv2.weight"].numpy(),
                                  sd["stages.3.1.pwconv2.weight"])


def test_drop_path_only_in_training():
    m = convnextv2("atto", num_classes=3, drop_path_rate=0.5)
    x = jt.array(np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32))
    m.eval()
    with jt.no_grad():
        a, b = m(x).numpy(), m(x).numpy()
    np.testing.assert_array_equal(a, b)
    m.train()
    with jt.no_grad():
        c = m(x).numpy()
    assert not np.allclose(a, c)


def test_card_and_preprocessing_match_timm(photos):
    """The convnextv2_base card (input size, crop, statistics, filter) is timm's
    pretrained configuration, and preprocess_for gives timm's eval transform."""
    from jclip.data.images import preprocess_for
    from jclip.catalog import get_card
    card, ref_cfg = get_card("convnextv2_base"), timm.models.get_pretrained_cfg("convnextv2_base")
    assert (3, card.input_size, card.input_size) == ref_cfg.input_size
    assert (card.crop_pct, card.interpolation, card.mean, card.std) == \
        (ref_cfg.crop_pct, ref_cfg.interpolation, ref_cfg.mean, ref_cfg.std)
    ref = timm.data.create_transform(**timm.data.resolve_data_config({}, pretrained_cfg=ref_cfg.to_dict()))
    ours = preprocess_for("convnextv2_base")
    for img in photos():
        x = ours(img)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32
        assert np.abs(x - ref(img.convert("RGB")).numpy()).max() <= 1e-5
