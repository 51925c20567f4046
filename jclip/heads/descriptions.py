"""Class descriptions (CuPL-style) as an alternative to prompt templates.

A user's JSON file maps each class to sentences describing it:

    {"Shiba Dog": ["A Shiba Inu is a small, fox-like dog.", "..."], ...}

Keys are raw class names ('Thu-dog_Shiba_Dog') or clean ones ('Shiba Dog').
A class's weight is normalise(mean of the normalised sentence embeddings),
exactly as template prompts are averaged (``text_classifier_weights``).
"""
import json
import os
from typing import Callable, List, Mapping, Sequence, Union

import numpy as np

from .base import as_features, l2_normalize
from .templates import clean_class_name

# a description file larger than this is refused before it is parsed
MAX_FILE_BYTES = 64 << 20


class DescriptionError(ValueError):
    """A description file that cannot be used; the message names the file and class."""


def read_descriptions(path, class_names: Sequence[str]) -> List[List[str]]:
    """The sentences of every class, in ``class_names`` order.

    Parameters: path: the JSON file; class_names: raw or clean names.
    Returns: one list of sentences per class.  Raises DescriptionError (one
    line naming the file and the class) for an unreadable file, a top level
    that is not an object, a missing class, a value that is not a list, an
    empty list or a sentence that is not non-empty text.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise DescriptionError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a "
                                   f"description file may hold")
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8-sig"))
    except DescriptionError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DescriptionError(f"{path}: not a readable JSON file ({e})") from None
    return descriptions_for(data, class_names, path)


def descriptions_for(data: Mapping, class_names: Sequence[str], source: str = "descriptions") -> List[List[str]]:
    """As ``read_descriptions`` for an already parsed {class: [sentences]} mapping."""
    if not isinstance(data, dict):
        raise DescriptionError(f"{source}: must be a JSON object {{class: [sentences]}}, "
                               f"got {type(data).__name__}")
    out = []
    for raw in class_names:
        key = raw if raw in data else clean_class_name(raw)
        if key not in data:
            raise DescriptionError(f"{source}: no descriptions for class {raw!r}"
                                   + (f" (nor {key!r})" if key != raw else ""))
        sentences = data[key]
        if not isinstance(sentences, list):
            raise DescriptionError(f"{source}: class {key!r}: descriptions must be a list of "
                                   f"sentences, got {type(sentences).__name__}")
        if not sentences:
            raise DescriptionError(f"{source}: class {key!r}: the list of descriptions is empty")
        for i, s in enumerate(sentences):
            if not isinstance(s, str) or not s.strip():
                raise DescriptionError(f"{source}: class {key!r}: description {i} must be "
                                       f"non-empty text, got {s!r}")
        out.append(list(sentences))
    return out


def description_weights(class_names: Sequence[str], encode_text: Callable,
                        descriptions: Union[str, os.PathLike, Mapping[str, List[str]]]) -> np.ndarray:
    """(C, D) float32 unit class weights from class descriptions.

    Parameters: class_names: raw or clean names; encode_text(list[str]) ->
    (len, D) embeddings (all sentences go in one call); descriptions: a
    JSON file path or a parsed {class: [sentences]} mapping.
    Returns: (C, D) float32 unit rows.
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError("class_names is empty")
    if isinstance(descriptions, (str, os.PathLike)):
        per_class = read_descriptions(descriptions, class_names)
    else:
        per_class = descriptions_for(descriptions, class_names)
    flat = [s for sentences in per_class for s in sentences]
    emb = np.asarray(encode_text(flat))
    if emb.ndim != 2 or emb.shape[0] != len(flat):
        raise ValueError(f"encode_text returned shape {emb.shape} for {len(flat)} sentences")
    emb = l2_normalize(as_features(emb, "text embeddings", normalised=False, dtype=np.float64))
    bounds = np.cumsum([0] + [len(s) for s in per_class])
    means = np.stack([emb[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return l2_normalize(means).astype(np.float32)

