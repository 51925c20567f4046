"""test.sh: the trained cascade on a test folder -> ``result.txt`` (+ ``out/stages.txt``).

Each test image is decoded and encoded once per CLIP backbone; InMaP (fitted
transductively on the readable test images) and LP++ share those features.
Every head file is checked against the SHA-256 train.sh recorded first.
Under mpirun the ranks share the encoding; rank 0 alone runs the heads and
writes ``result.txt`` and ``stages.txt``.
"""
import os
import time
from typing import Any, Dict, Optional


from ..data.contest import ContestFormatError, check_result, format_result, list_test_images, read_classes
from ..io import atomic_write_text
from . import manifest as manifest_file
from .backbones import encode_backbones, step
from .cascade import STAGES, Cascade
from .heads import DogHead, StageHead, fit_unseen, load_seen


def write_result(path: str, rows, folder: str, num_classes: int, k: int) -> None:
    """Validate and write result.txt atomically: temp file, check, rename."""
    atomic_write_text(path, format_result(rows, num_classes, k),
                      check=lambda tmp: check_result(tmp, folder, num_classes, k))


def test(cfg, images: Optional[str] = None, classes: Optional[str] = None,
         result: str = "result.txt", features: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Write ``result`` for the test folder ``images`` over the class list ``classes``
    (defaults from the ``data`` section); ``features`` {backbone key: folder of
    ``jclip.extract``} replaces that backbone's encoding.  Returns counts per
    stage and times."""
    import jclip  # noqa: F401
    from ..models.load import use_device

    times: Dict[str, float] = {}
    t_all = time.time()
    casc = cfg.cascade
    images = images or cfg.data.file("test_images")
    classes = classes or cfg.data.file("test_classes")
    names = read_classes(classes)
    seen = read_classes(cfg.data.file("classes"))
    n_seen = casc.unseen_from
    if names[:n_seen] != seen[:n_seen] or len(seen) != n_seen:
        raise ContestFormatError(f"{classes}: its first {n_seen} classes must be the "
                                 f"{len(seen)} training classes of {cfg.data.file('classes')}, in order")
    manifest = manifest_file.read(cfg)
    lpp = {key: load_seen(cfg, manifest, key) for key in casc.lpp_mix}     # the trained seen heads, checked first
    files = list_test_images(images)
    paths = [os.path.join(images, f) for f in files]
    device = use_device(cfg.device)
    print(f"{len(files)} test images in {images}, {len(names)} classes "
          f"({len(names) - n_seen} unseen), device {device}")

    backbones = sorted(set(casc.inmap_mix) | set(casc.lpp_mix))
    enc = encode_backbones(cfg, backbones, [paths], device, [names],
                           manifest_file.trained_backbones(manifest, casc.lpp_mix), times,
                           features=features)
    good = enc.readable
    if not good.any():
        raise ContestFormatError(f"{images}: no test image could be decoded")
    unseen = StageHead.of(cfg.stages.unseen)
    label = "InMaP" if unseen.head == "inmap" else unseen.describe()
    with step(f"{label} on {int(good.sum())} images x {len(names)} classes", times):
        # transductive: fitted on the readable images it labels
        inmap = {key: fit_unseen(cfg, enc.features[key][good], enc.texts[key][0])
                 for key in casc.inmap_mix}
    cascade = Cascade.from_config(cfg, inmap, lpp, len(names), n_seen,
                                  DogHead.from_manifest(cfg, manifest, casc.topk))
    with step("cascade: LP++, routing, dog head", times):
        pred = cascade.predict(enc.features, paths, good)
    with step(f"write {result}", times):
        write_result(result, list(zip(files, pred.ids)), images, len(names), cascade.k)
        stage_file = os.path.join(cfg.out_dir, "stages.txt")
        atomic_write_text(stage_file, "".join(f"{f} {s}\n" for f, s in zip(files, pred.stage)))
    counts = {s: int((pred.stage == s).sum()) for s in STAGES}
    print("decided by: " + ", ".join(f"{s} {n}" for s, n in counts.items()
                                     if n or s in ("inmap", "lpp", "dog")))
    total = time.time() - t_all
    print(f"wrote {result}: {len(files)} lines in {total:.1f} s "
          f"({len(files) / total:.1f} images/s); per-image stages in {stage_file}")
    return {"counts": counts, "times_s": times, "total_s": total}
