"""Parameter budget of the cascade, counted from the configuration.

Counts come from state-dict shapes: for a known architecture (every CLIP
card, OpenAI's and open_clip's, by its architecture facts; ConvNeXt-V2-Base)
the shapes are generated from its hyper-parameters,
so no weights are needed; otherwise (or with ``from_weights``) they are read
from the weights file (torch-free reader).  Jittor is never imported.  A
parameter is every state-dict tensor except BatchNorm running statistics,
counters and the derived attention mask.

Three totals (SPEC section 1 asks for the first two):
  loaded    each distinct weight once;
  by use    each component once per cascade stage that uses its output (the
            CLIP towers serve both InMaP and LP++, so they count twice);
  by calls  each component once per forward pass the pipeline runs on an
            input.  jclip encodes each image and each class prompt once per
            backbone (InMaP and LP++ share the features), so every tower runs
            once and by calls equals loaded.  The reference solution's 489M
            is this count with its text towers run twice (prompts re-encoded
            per stage).
"""
import os
from typing import Callable, Dict, List, Mapping, Tuple

from ..data.lists import read_classes
from ..models.registry import CARDS
from .config import Config

# Every CLIP card, OpenAI's ("ViT-B/32") and open_clip's ("ViT-B-32/laion2b_s34b_b79k"):
# its architecture's sizes are on the card (models/configs/architectures.json).
CLIP_ARCHS = [n for n, c in CARDS.items() if c.family == "clip"]
# ConvNeXt-V2 (depths, dims) of the model the configuration ships with (as
# jclip.models.convnext.CONFIGS, which imports Jittor; tests keep them equal).
# Other sizes are counted from their weights file.
CONVNEXT_ARCHS = {"convnextv2_base": ((3, 3, 27, 3), (128, 256, 512, 1024))}
NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked", "attn_mask",
                  "input_resolution", "context_length", "vocab_size")

# Forward passes test.sh runs per input (image or class prompt) for every
# component: each image and each prompt is encoded once per backbone
# (pipeline/backbones.py, through the feature cache) and InMaP and LP++ share
# those features; the heads and the dog model run once on what they are given.
CALLS_PER_INPUT = 1

Shapes = Dict[str, Tuple[int, ...]]


def _resblocks(prefix, width, layers, mlp):
    s = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        s.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                  p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                  p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                  p + "mlp.c_fc.weight": (mlp, width), p + "mlp.c_fc.bias": (mlp,),
                  p + "mlp.c_proj.weight": (width, mlp), p + "mlp.c_proj.bias": (width,),
                  p + "ln_2.weight": (width,), p + "ln_2.bias": (width,)})
    return s


def _bn(name, c):
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}


def clip_shapes(name: str) -> Shapes:
    """{key: shape} of a CLIP checkpoint (a CLIP card's name), from its
    architecture on the card."""
    if name not in CLIP_ARCHS:
        raise KeyError(f"unknown CLIP model {name!r} (known: {', '.join(CLIP_ARCHS)})")
    arch = CARDS[name].architecture
    embed, v, t = arch.embed_dim, arch.vision, arch.text
    s, w = {}, v.width
    if arch.is_vit:
        grid, p = v.image_size // v.patch_size, v.patch_size
        s.update({"visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
                  "visual.proj": (w, embed), "visual.conv1.weight": (w, 3, p, p),
                  "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)})
        if v.ln_pre:
            s.update({"visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,)})
        s.update(_resblocks("visual.transformer", w, v.layers, v.mlp_width))
    else:
        for i, (cin, cout) in enumerate(((3, w // 2), (w // 2, w // 2), (w // 2, w)), 1):
            s[f"visual.conv{i}.weight"] = (cout, cin, 3, 3)
            s.update(_bn(f"visual.bn{i}", cout))
        inplanes = w
        for li, (blocks, planes) in enumerate(zip(v.layers, (w, 2 * w, 4 * w, 8 * w)), 1):
            for b in range(blocks):
                p = f"visual.layer{li}.{b}"
                s.update({f"{p}.conv1.weight": (planes, inplanes, 1, 1),
                          f"{p}.conv2.weight": (planes, planes, 3, 3),
                          f"{p}.conv3.weight": (planes * 4, planes, 1, 1)})
                for j, c in ((1, planes), (2, planes), (3, planes * 4)):
                    s.update(_bn(f"{p}.bn{j}", c))
                if b == 0 and (li > 1 or inplanes != planes * 4):
                    s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                    s.update(_bn(f"{p}.downsample.1", planes * 4))
                inplanes = planes * 4
        width = w * 32
        sp = v.image_size // 32
        s["visual.attnpool.positional_embedding"] = (sp * sp + 1, width)
        for k in ("q", "k", "v"):
            s.update({f"visual.attnpool.{k}_proj.weight": (width, width),
                      f"visual.attnpool.{k}_proj.bias": (width,)})
        s.update({"visual.attnpool.c_proj.weight": (embed, width),
                  "visual.attnpool.c_proj.bias": (embed,)})
    tw = t.width
    s.update({"token_embedding.weight": (t.vocab_size, tw), "positional_embedding": (t.context_length, tw),
              "ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, embed),
              "logit_scale": ()})
    s.update(_resblocks("transformer", tw, t.layers, t.mlp_width))
    return s


def convnext_shapes(name: str, num_classes: int = 1000) -> Shapes:
    """{key: shape} of an official-named ConvNeXt-V2 of CONVNEXT_ARCHS."""
    depths, dims = CONVNEXT_ARCHS[name]
    s = {"downsample_layers.0.0.weight": (dims[0], 3, 4, 4), "downsample_layers.0.0.bias": (dims[0],),
         "downsample_layers.0.1.weight": (dims[0],), "downsample_layers.0.1.bias": (dims[0],)}
    for i in range(1, 4):
        s.update({f"downsample_layers.{i}.0.weight": (dims[i - 1],),
                  f"downsample_layers.{i}.0.bias": (dims[i - 1],),
                  f"downsample_layers.{i}.1.weight": (dims[i], dims[i - 1], 2, 2),
                  f"downsample_layers.{i}.1.bias": (dims[i],)})
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for b in range(depth):
            p = f"stages.{i}.{b}."
            s.update({p + "dwconv.weight": (c, 1, 7, 7), p + "dwconv.bias": (c,),
                      p + "norm.weight": (c,), p + "norm.bias": (c,),
                      p + "pwconv1.weight": (4 * c, c), p + "pwconv1.bias": (4 * c,),
                      p + "grn.gamma": (1, 1, 1, 4 * c), p + "grn.beta": (1, 1, 1, 4 * c),
                      p + "pwconv2.weight": (c, 4 * c), p + "pwconv2.bias": (c,)})
    s.update({"norm.weight": (dims[-1],), "norm.bias": (dims[-1],)})
    if num_classes:
        s.update({"head.weight": (num_classes, dims[-1]), "head.bias": (num_classes,)})
    return s


def count(shapes: Shapes, prefix: str = None, exclude_prefix: str = None) -> int:
    """Parameters in a {key: shape} dict (optionally only keys under a prefix)."""
    total = 0
    for k, shape in shapes.items():
        if k.rsplit(".", 1)[-1] in NOT_PARAMETERS or k in NOT_PARAMETERS:
            continue
        if prefix and not k.startswith(prefix):
            continue
        if exclude_prefix and k.startswith(exclude_prefix):
            continue
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def shapes_from_file(path: str) -> Shapes:
    """{key: shape} read from a weights file (any format jclip reads; no Jittor, no torch)."""
    from ..weights.checkpoint import prepare_state_dict, read_state_dict
    sd, _ = read_state_dict(path)
    _, sd = prepare_state_dict(sd, path)      # official names, wrappers removed
    return {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}


def _shapes(model: str, weights: str, known: Mapping[str, Callable[[], Shapes]],
            from_weights: bool) -> Tuple[Shapes, str]:
    """(shapes, where they came from) for one configured model."""
    if weights and os.path.isfile(weights) and (from_weights or model not in known):
        return shapes_from_file(weights), weights
    if model in known:
        return known[model](), f"architecture {model}"
    raise FileNotFoundError(f"{weights}: weights not found, and {model!r} is not a "
                            f"known architecture to count from ({', '.join(known)})")


def _num_classes(cfg: Config) -> Tuple[int, str]:
    path = cfg.data.file("test_classes")
    if os.path.isfile(path):
        return len(read_classes(path)), path
    return cfg.budget.num_classes, "budget.num_classes"


def components(cfg: Config, from_weights: bool = False
               ) -> Tuple[List[Tuple[str, int]], Dict[str, List[str]], List[str]]:
    """What the configured cascade holds.

    Parameters: cfg: the configuration; from_weights: read the weights files
    even for known architectures.
    Returns: (rows, stages, notes): rows = [(component, parameters)], stages =
    {stage: [components it uses]}, notes = where each count came from.
    """
    casc = cfg.cascade
    n_all, src = _num_classes(cfg)
    n_seen = casc.unseen_from
    rows, notes, stages = [], [f"classes: {n_all} from {src}, {n_seen} seen"], {"InMaP": [], "LP++": [], "dog head": []}
    clip_known = {n: (lambda n=n: clip_shapes(n)) for n in CLIP_ARCHS}
    for key in sorted(set(casc.inmap_mix) | set(casc.lpp_mix)):
        spec = cfg.backbones[key]
        shapes, source = _shapes(spec.model, spec.weights, clip_known, from_weights)
        embed = shapes["text_projection"][1]
        label = spec.model
        image, text = count(shapes, "visual."), count(shapes, exclude_prefix="visual.")
        rows += [(f"{label} image tower", image), (f"{label} text tower", text)]
        notes.append(f"{label}: {image + text:,} from {source}")
        towers = [f"{label} image tower", f"{label} text tower"]
        if key in casc.inmap_mix:
            rows.append((f"InMaP proxies on {label} ({n_all}x{embed})", n_all * embed))
            stages["InMaP"] += towers + [rows[-1][0]]
        if key in casc.lpp_mix:
            # W (C x D) + bias + per-class alpha; the text weights it also keeps
            # are the text tower's output, counted with the tower.
            rows.append((f"LP++ on {label} ({n_seen}x{embed} + 2x{n_seen})", n_seen * embed + 2 * n_seen))
            stages["LP++"] += towers + [rows[-1][0]]
    dog = cfg.dog_head
    conv_known = {n: (lambda n=n: convnext_shapes(n)) for n in CONVNEXT_ARCHS}
    shapes, source = _shapes(dog.model, dog.weights, conv_known, from_weights)
    lo, hi = casc.dog_range
    feat = shapes["norm.weight"][0]
    full = count(shapes)
    backbone = count(shapes, exclude_prefix="head.")
    rows.append((f"{dog.model} backbone (without its {full - backbone:,}-parameter ImageNet head)", backbone))
    rows.append((f"dog head ({hi - lo + 1}-way, {feat}->{hi - lo + 1})", (feat + 1) * (hi - lo + 1)))
    notes.append(f"{dog.model}: {full:,} with its ImageNet head, from {source}")
    stages["dog head"] += [rows[-2][0], rows[-1][0]]
    return rows, stages, notes


def totals(rows: List[Tuple[str, int]], stages: Mapping[str, List[str]]) -> Tuple[int, int]:
    """(loaded, by use) of components()' rows and stages."""
    params = dict(rows)
    loaded = sum(params.values())
    by_use = sum(params[c] for used in stages.values() for c in used)
    return loaded, by_use


def by_calls(rows: List[Tuple[str, int]]) -> int:
    """Each component counted once per forward pass test.sh runs on an input."""
    return sum(CALLS_PER_INPUT * n for _, n in rows)


# which totals the limit applies to, for each budget.limit_on / --limit-on
LIMIT_APPLIES_TO = {"loaded": ("loaded",), "by-use": ("by use",), "by-calls": ("by calls",),
                    "both": ("loaded", "by use"), "all": ("loaded", "by use", "by calls")}


def verdict(counts: Mapping[str, int], limit: int, limit_on: str) -> Tuple[bool, str]:
    """(over, the last line): "within the limit" only when every count the limit
    applies to is within it; the counts it does not apply to are named."""
    applies = LIMIT_APPLIES_TO[limit_on]
    over = [name for name in applies if counts[name] > limit]
    if over:
        return True, "OVER the limit: " + ", ".join(
            f"{name} {counts[name]:,} > {limit:,}" for name in over)
    line = "within the limit: " + ", ".join(f"{name} {counts[name]:,} <= {limit:,}" for name in applies)
    others = [name for name in counts if name not in applies and counts[name] > limit]
    if others:
        line += (f" ({' and '.join(others)} {'is' if len(others) == 1 else 'are'} over it, but the limit "
                 f"applies to {' and '.join(applies)}; --limit-on all checks every count)")
    return False, line


def report(cfg: Config, from_weights: bool = False, limit: int = None,
           limit_on: str = None, out: Callable[[str], None] = print) -> Tuple[int, int, bool]:
    """Print the budget table and totals; the last line is the verdict.

    Returns: (loaded, by_use, over_limit); by calls equals loaded here.
    """
    rows, stages, notes = components(cfg, from_weights)
    loaded, by_use = totals(rows, stages)
    calls = by_calls(rows)
    limit = int(limit if limit is not None else cfg.budget.limit)
    limit_on = limit_on or cfg.budget.limit_on
    if limit_on not in LIMIT_APPLIES_TO:
        raise ValueError(f"limit_on must be one of {', '.join(LIMIT_APPLIES_TO)}, not {limit_on!r}")
    width = max(len(c) for c, _ in rows)
    out("component".ljust(width) + "   parameters   used by")
    for c, n in rows:
        users = ", ".join(s for s, used in stages.items() if c in used)
        out(f"{c.ljust(width)} {n:>12,}   {users}")
    out("-" * (width + 25))
    out(f"{'total, loaded (each weight once)'.ljust(width)} {loaded:>12,}")
    out(f"{'total, by use (once per stage using it)'.ljust(width)} {by_use:>12,}")
    out(f"{'total, by calls (once per forward pass run)'.ljust(width)} {calls:>12,}")
    out(f"{('limit (on ' + limit_on + ')').ljust(width)} {limit:>12,}")
    for n in notes:
        out(f"  {n}")
    if calls == loaded:
        out("  by calls equals loaded: each image and each class prompt is encoded once per "
            "backbone, and InMaP and LP++ share those features (the reference solution's "
            "489M counted its text towers twice, as it re-encoded the prompts per stage)")
    over, line = verdict({"loaded": loaded, "by use": by_use, "by calls": calls}, limit, limit_on)
    out(line)
    return loaded, by_use, over
