"""Parameter budget of the cascade, counted from the configuration.

Counts come from state-dict shapes: for a model of the catalogue (every CLIP
card, OpenAI's and open_clip's; every ConvNeXt-V2 size) the shapes are its
card's layout (``jclip.catalog.state_dict_layout``, derived from the
architecture's facts), so no weights are needed; otherwise (or with
``from_weights``) they are read from the weights file (torch-free reader).
Jittor is never imported.  A parameter is every state-dict tensor except
BatchNorm running statistics, counters and the derived attention mask.

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

from ..catalog import available, get_card, prepare_state_dict, state_dict_layout
from ..data.lists import read_classes
from .config import Config

NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked", "attn_mask",
                  "input_resolution", "context_length", "vocab_size")
IMAGENET_CLASSES = 1000   # the ConvNeXt-V2 checkpoints' head, counted and reported apart

# Forward passes test.sh runs per input (image or class prompt) for every
# component: each image and each prompt is encoded once per backbone
# (pipeline/backbones.py, through the feature cache) and InMaP and LP++ share
# those features; the heads and the dog model run once on what they are given.
CALLS_PER_INPUT = 1

Shapes = Dict[str, Tuple[int, ...]]


def card_shapes(name: str) -> Shapes:
    """{key: shape} of a catalogue model's checkpoint (ConvNeXt-V2 with its ImageNet head)."""
    return state_dict_layout(get_card(name).architecture, IMAGENET_CLASSES)


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
    from ..weights.checkpoint import read_state_dict
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
    clip_known = {n: (lambda n=n: card_shapes(n)) for n in available("clip")}
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
    conv_known = {n: (lambda n=n: card_shapes(n)) for n in available("convnextv2")}
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
