"""The held-out images val.sh measures, and their features.

Images: process.py's ``val.txt`` minus every image train.sh used (the shots and
the validation images that chose the epochs, ``pipeline.train.selection_images``).
No test image is read.  Features come from the pipeline's backbones (the
shots and selection images from train.sh's feature cache).
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.contest import ContestFormatError, domain_of, read_classes, read_labelled_list
from ..io import sha256_file
from ..pipeline import manifest as manifest_file
from ..pipeline.backbones import encode_backbones, relative_to
from ..pipeline.cascade import class_masks
from ..pipeline.config import Config
from ..pipeline.heads import DogHead
from ..pipeline.train import list_paths, per_class, selection_images


@dataclass
class Part:
    """Readable images of one part of the data: features per backbone and labels."""
    x: Dict[str, np.ndarray]
    y: np.ndarray


@dataclass
class ValLists:
    """The lists and classes (read before any model is loaded).

    names / test_names: the seen classes / the test class list (None without one);
    dog: (C,) the classes the configuration routes to the dog head;
    dog_domain, dog_truth: the dog head's domain and its classes (what routing should match);
    shots, selection, items: the 4-shot images, LP++'s epoch-selection images,
    the images to measure, as (path relative to the data root, label).
    """
    cfg: Config
    manifest: dict
    k: int
    names: List[str]
    test_names: Optional[List[str]]
    val_path: str
    val_sha256: str
    val_count: int
    used_count: int
    dog: np.ndarray
    dog_domain: Optional[str]
    dog_truth: np.ndarray
    shots: List[Tuple[str, int]]
    selection: List[Tuple[str, int]]
    items: List[Tuple[str, int]]


@dataclass
class ValData(ValLists):
    """The lists with the features of their readable images.

    train, sel, eval: the 4-shot, epoch-selection and measured images' features and labels;
    eval_paths: the measured images (relative to the data root), eval_abs: as files;
    unreadable: measured images no backbone could decode (left out);
    text_seen: {backbone: {template set: (C, D)}}; text_test: {backbone: (C_test, D)} or None.
    """
    backbones: List[str]
    template_sets: List[str]
    train: Part
    sel: Part
    eval: Part
    eval_paths: List[str]
    eval_abs: List[str]
    unreadable: List[str]
    text_seen: Dict[str, Dict[str, np.ndarray]]
    text_test: Optional[Dict[str, np.ndarray]]
    dog_head: DogHead
    times: Dict[str, float] = field(default_factory=dict)


def dog_domain(cfg, names: Sequence[str]) -> Optional[str]:
    """The domain whose classes the dog head should answer: ``cascade.dog_domain``,
    else the domain of most classes in ``cascade.dog_range``."""
    casc = cfg.cascade
    if casc.dog_domain:
        if casc.dog_domain not in {domain_of(n) for n in names}:
            raise ContestFormatError(f"{cfg.path}: cascade.dog_domain {casc.dog_domain!r} "
                                     f"is not a domain of the class list")
        return casc.dog_domain
    lo, hi = casc.dog_range
    inside = [domain_of(n) for n in names[lo:hi + 1]]
    return max(dict.fromkeys(inside), key=inside.count) if inside else None


def read_lists(cfg, per_class_limit: Optional[int] = None) -> ValLists:
    """The validation lists, checked against train.sh's manifest.

    Parameters: cfg: the configuration; per_class_limit: at most this many
    measured images per class.
    Returns: a ValLists.  Refuses heads trained with other settings or another
    4-shot list, before any model is loaded.
    """
    casc = cfg.cascade
    names = read_classes(cfg.data.file("classes"))
    test_classes = cfg.data.file("test_classes")
    test_names = read_classes(test_classes) if os.path.isfile(test_classes) else None
    if test_names is not None and test_names[:len(names)] != names:
        raise ContestFormatError(f"{test_classes}: its first {len(names)} classes must be "
                                 f"those of {cfg.data.file('classes')}, in order")
    manifest = manifest_file.read(cfg)
    shots_path, val_path = list_paths(cfg)
    shots = read_labelled_list(shots_path, len(names))
    manifest_file.check_shots(manifest, shots_path, cfg.out_dir)
    if not os.path.isfile(val_path):
        raise ContestFormatError(f"{val_path}: no validation list; run process.py with "
                                 f"--val-per-class > 0")
    val = read_labelled_list(val_path, len(names))
    _, dog = class_masks(len(names), len(names), casc.dog_range)
    domain = dog_domain(cfg, names)
    lpp_sel, dog_sel = selection_images(cfg, val, dog)
    used = {p for p, _ in shots + lpp_sel + dog_sel}
    items = [(p, y) for p, y in val if p not in used]
    if per_class_limit:
        items = per_class(items, int(per_class_limit))
    if not items:
        raise ContestFormatError(
            f"{val_path}: no validation image left after the {len(used)} that train.sh used "
            f"(shots and epoch selection); run process.py with a larger --val-per-class")
    return ValLists(cfg=cfg, manifest=manifest, k=casc.topk, names=names, test_names=test_names,
                    val_path=val_path, val_sha256=sha256_file(val_path), val_count=len(val),
                    used_count=len(used & {p for p, _ in val}), dog=dog, dog_domain=domain,
                    dog_truth=np.array([domain_of(n) == domain for n in names]),
                    shots=shots, selection=lpp_sel, items=items)


def encode(lists: ValLists, templates: Sequence[str] = (), note: str = "",
           features: Optional[Dict[str, str]] = None) -> ValData:
    """Features of the lists' images and class weights, each once per backbone.

    Parameters: lists: from read_lists; templates: template sets to build class
    weights for besides the configuration's; note: added to the opening line;
    features: {backbone key: folder of ``jclip.extract``} used instead of encoding.
    Returns: a ValData.
    """
    import jclip  # noqa: F401  (Jittor defaults before jittor)
    from ..models.load import use_device
    cfg, casc = lists.cfg, lists.cfg.cascade
    root = cfg.data.root
    shots, lpp_sel, items = lists.shots, lists.selection, lists.items
    backbones = sorted(set(casc.inmap_mix) | set(casc.lpp_mix))
    template_sets = list(dict.fromkeys([cfg.templates] + list(templates)))
    name_lists = [lists.names] + ([lists.test_names] if lists.test_names else [])
    device = use_device(cfg.device)
    print(f"validation: {len(items)} images of {len({y for _, y in items})} classes "
          f"({lists.val_count} in {lists.val_path}, {lists.used_count} used by train.sh){note}; "
          f"device {device}", flush=True)
    times: Dict[str, float] = {}
    # shots + selection: the very list train.sh encoded, so the feature cache has it
    enc = encode_backbones(cfg, backbones, [relative_to(root, shots + lpp_sel), relative_to(root, items)],
                           device, name_lists,
                           manifest_file.trained_backbones(lists.manifest, casc.lpp_mix),
                           times, template_sets, features)
    n_s, n_l = len(shots), len(lpp_sel)
    labels = np.array([y for _, y in shots + lpp_sel + items], np.int64)

    def part(sl):
        keep = enc.readable[sl]
        return Part({key: enc.features[key][sl][keep] for key in backbones}, labels[sl][keep])

    ok = enc.readable[n_s + n_l:]
    eval_paths = [p for (p, _), good in zip(items, ok) if good]
    if not eval_paths:
        raise ContestFormatError(f"{lists.val_path}: no readable validation image")
    # enc.texts[key][i]: name list i // len(sets), template set i % len(sets)
    n_sets = len(template_sets)
    return ValData(
        **vars(lists), backbones=backbones, template_sets=template_sets,
        train=part(slice(0, n_s)), sel=part(slice(n_s, n_s + n_l)), eval=part(slice(n_s + n_l, None)),
        eval_paths=eval_paths, eval_abs=[os.path.join(root, p) for p in eval_paths],
        unreadable=[p for (p, _), good in zip(items, ok) if not good],
        text_seen={key: dict(zip(template_sets, enc.texts[key][:n_sets])) for key in backbones},
        text_test={key: enc.texts[key][n_sets] for key in backbones} if lists.test_names else None,
        dog_head=DogHead.from_manifest(cfg, lists.manifest, casc.topk), times=times)
