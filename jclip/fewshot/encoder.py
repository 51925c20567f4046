"""The CLIP a study runs on, its image and prompt features through the cache.

Under mpirun (``jclip.distributed``) every rank makes the same calls: each
encodes an equal contiguous shard of the images or prompts the cache lacks,
cut at batch boundaries (every forward pass sees the batch one process would
give it), and rank 0 gets the features (the other ranks None), bit for bit
those of one process.
"""
from typing import Optional, Sequence, Union

import numpy as np

from .. import distributed


class CachedEncoder:
    """A loaded CLIP whose image and text encoders go through the feature cache.

    Parameters: model_name: a CLIP name (ViT-B/32, ...) or weights file;
    cache_dir: the feature cache (jclip.features); device: 'cpu', 'cuda' or
    None (CUDA when Jittor has it); batch_size: image encoding batch;
    progress: progress bars while encoding; features: a ``python -m
    jclip.extract`` folder of this model's weights and preprocessing whose
    rows replace image encoding (read on rank 0; FeaturesError when it is
    another model's or incomplete).
    """

    def __init__(self, model_name: str, cache_dir: str, device: Optional[str] = None,
                 batch_size: int = 64, progress: bool = True, features: Optional[str] = None):
        import jclip  # noqa: F401  (before jittor)
        from ..models.load import weights_sha256
        from ..pretrained import load
        self.model, self.preprocess = load(model_name, device=device)
        self.name, self.sha = self.model.name, weights_sha256(self.model)
        self.cache_dir, self.batch_size, self.progress = cache_dir, batch_size, progress
        self.errors = {}        # path -> why it could not be decoded (this run's encodes)
        self.given = bool(features)
        if self.given and distributed.is_root():     # the folder must hold this model's features
            from ..extract import load_features_for
            self.features = load_features_for(features, self.sha, self.preprocess.id, self.name)
        else:
            self.features = None

    def images(self, paths: Sequence[str]) -> Optional[np.ndarray]:
        """(N, D) normalised features of image files (cached); an unreadable
        file's row is zero, as in the pipeline (``datasets.keep_readable``
        drops and reports it); under mpirun None on the ranks other than 0."""
        from ..data.images import iter_batches
        from ..features.encode import encode_images
        from ..features.cache import encode_images_cached
        paths = list(paths)
        if self.given:       # nothing to encode: rank 0 reads the rows
            return self._given_rows(paths) if distributed.is_root() else None
        alone = distributed.world_size() == 1

        def encode(chunk):
            out = np.zeros((len(chunk), int(self.model.text_projection.shape[1])), np.float32)
            for idx, batch, errs in iter_batches(chunk, self.preprocess, self.batch_size):
                if len(idx):
                    out[idx] = encode_images(self.model, batch, self.batch_size)
                self.errors.update(errs)
            return out

        def cached(encoder):
            # under mpirun the cache hands over what it lacks as one list, which
            # drive splits over the ranks at multiples of the batch
            return encode_images_cached(paths, encoder, self.name, self.sha, self.preprocess.id,
                                        self.cache_dir, self.batch_size if alone else max(1, len(paths)),
                                        self.progress and alone)
        return distributed.drive(cached, encode, unit=self.batch_size)

    def _given_rows(self, paths: Sequence[str]) -> np.ndarray:
        """The rows of ``paths`` in the features folder (FeaturesError for a
        path it lacks); an image it could not read has a zero row."""
        rows, readable = self.features.rows(paths)
        rows = np.array(rows, np.float32)
        rows[~np.asarray(readable, bool)] = 0
        for i in np.flatnonzero(~np.asarray(readable, bool)):
            self.errors[paths[int(i)]] = "unreadable when the features folder was made"
        return rows

    def text_weights(self, class_names: Sequence[str],
                     templates: Union[str, Sequence[str]]) -> Optional[np.ndarray]:
        """(C, D) zero-shot class weights from prompt templates (prompts cached);
        under mpirun None on the ranks other than 0."""
        from ..features.encode import TEXT_BATCH, encode_texts
        from ..features.cache import cached_text_encoder
        from ..heads import text_classifier_weights
        alone = distributed.world_size() == 1

        def run(encoder):
            # under mpirun the missing prompts go as one list (split by drive)
            enc = cached_text_encoder(encoder, self.name, self.sha, self.cache_dir,
                                      batch_size=TEXT_BATCH if alone else 1 << 40, progress=False)
            return text_classifier_weights(class_names, enc, templates)
        return distributed.drive(run, lambda t: encode_texts(self.model, t, TEXT_BATCH), unit=TEXT_BATCH)
