"""OpenAI CLIP's byte-level BPE tokenizer (vocab 49,408, context 77).

Same ids as OpenAI's ``clip.tokenize``: text is cleaned with ftfy and a double
html-unescape, whitespace is collapsed, it is lower-cased, split by CLIP's
regex, and each piece is byte-encoded then merged by the ranked BPE merges
shipped beside this file (bpe_simple_vocab_16e6.txt.gz, see its NOTICE).
"""
import functools
import gzip
import html
import os
from typing import Iterable, List, Sequence, Union

import ftfy
import numpy as np
import regex as re

BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_MERGES_USED = 49152 - 256 - 2  # OpenAI uses this many merges: 256 bytes x2 + merges + 2 specials = 49,408


@functools.lru_cache()
def bytes_to_unicode():
    """Reversible map from the 256 byte values to printable unicode characters.

    BPE works on strings; bytes that are whitespace/control characters are
    moved to unused code points so no byte is lost or merged across.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _clean(text):
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    def __init__(self, bpe_path=BPE_PATH):
        with gzip.open(bpe_path) as f:
            merges = f.read().decode("utf-8").split("\n")[1:_MERGES_USED + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {SOT: SOT, EOT: EOT}
        self.pattern = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE)
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(self.encoder)

    def bpe(self, token):
        """Merge one pre-token (already byte-encoded) into BPE units."""
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> List[int]:
        """BPE ids of ``text`` (cleaned, lower-cased), without start/end tokens."""
        ids = []
        for piece in re.findall(self.pattern, _clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[unit] for unit in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of BPE ids (word ends become spaces)."""
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace") \
            .replace("</w>", " ")


@functools.lru_cache()
def get_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer (the vocabulary is read once)."""
    return SimpleTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77,
             truncate: bool = False) -> np.ndarray:
    """OpenAI CLIP token ids, as ``clip.tokenize``.

    Parameters: ``texts`` one string or a list; ``context_length`` the model's
    (77 for every OpenAI CLIP); ``truncate`` cut long texts instead of raising.
    Returns: (len(texts), context_length) int64, <|startoftext|> ... <|endoftext|>,
    zero-padded.  A text longer than the context raises ValueError unless
    ``truncate``, in which case it is cut and the last id is forced back to
    <|endoftext|> (the text encoder reads its feature at that position).
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = get_tokenizer()
    out = np.zeros((len(texts), context_length), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = [tok.sot_token] + tok.encode(text) + [tok.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"text {i} is {len(ids)} tokens, longer than the context length "
                                 f"{context_length} (pass truncate=True to cut it): {text[:60]!r}...")
            ids = ids[:context_length]
            ids[-1] = tok.eot_token
        out[i, :len(ids)] = ids
    return out
