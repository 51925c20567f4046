"""The CLIP a study runs on, with cached image and prompt features."""
from typing import Optional, Sequence, Union

import numpy as np


class Backbone:
    """A loaded CLIP with cached image and text encoders.

    Parameters: model_name: a CLIP name (ViT-B/32, ...) or weights file;
    cache_dir: the feature cache (jclip.features); device: 'cpu', 'cuda' or
    None (CUDA when Jittor has it); batch_size: image encoding batch;
    progress: progress bars while encoding.
    """

    def __init__(self, model_name: str, cache_dir: str, device: Optional[str] = None,
                 batch_size: int = 64, progress: bool = True):
        import jclip  # noqa: F401  (before jittor)
        from ..models.load import load, weights_sha256
        self.model, self.preprocess = load(model_name, device=device)
        self.name, self.sha = self.model.name, weights_sha256(self.model)
        self.cache_dir, self.batch_size, self.progress = cache_dir, batch_size, progress

    def images(self, paths: Sequence[str]) -> np.ndarray:
        """(N, D) normalised features of image files (cached; unreadable files raise)."""
        from ..features.encode import encode_image_files
        from ..features.cache import encode_images_cached

        def encode(chunk):
            return encode_image_files(self.model, chunk, self.preprocess, self.batch_size,
                                      strict=True, progress=False)[0]
        return encode_images_cached(paths, encode, self.name, self.sha, self.preprocess.id,
                                    self.cache_dir, self.batch_size, self.progress)

    def text_weights(self, class_names: Sequence[str], templates: Union[str, Sequence[str]]) -> np.ndarray:
        """(C, D) zero-shot class weights from prompt templates (prompts cached)."""
        from ..features.encode import encode_texts
        from ..features.cache import cached_text_encoder
        from ..heads import text_classifier_weights
        enc = cached_text_encoder(lambda t: encode_texts(self.model, t), self.name, self.sha,
                                  self.cache_dir, progress=False)
        return text_classifier_weights(class_names, enc, templates)
