"""``CLIPTokenizer``: CLIP's byte-level BPE (Radford et al. 2019, §2.2; Sennrich et al. 2016), from scratch.

Reads CLIP's ``vocab.json`` (token -> id) and ``merges.txt`` (one merge "a b" per line,
best first) and gives the ids transformers' ``CLIPTokenizer`` gives on the same files.
A caption becomes ids in five steps:

    1. normalise:     Unicode NFC, every run of whitespace -> one space, lowercase
    2. pre-tokenise:  split into words: the contractions 's 't 're 've
                      'm 'll 'd, runs of letters, single digits (one Unicode number
                      character each), runs of other non-space characters; spaces dropped
    3. bytes:         each word's UTF-8 bytes, each byte written as one printable
                      character (GPT-2's byte-to-unicode table), the last one + "</w>"
    4. BPE:           repeatedly merge the adjacent pair with the best (lowest) merge rank;
                      a symbol missing from the vocabulary becomes the unknown token
    0. specials:      special tokens written verbatim in the text ("<|endoftext|>") are cut
                      out first and become their ids
    5. specials:      [BOS] ids [EOS]; ``truncation`` keeps max_length − 2 word tokens;
                      ``padding="max_length"`` pads with the pad token to max_length

``build_clip_vocab(captions)`` learns a vocabulary in the same format from a corpus
(the classic BPE training loop: count adjacent symbol pairs over the corpus's words,
merge the most frequent, repeat), and ``save_pretrained`` writes the files transformers
reads (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json).
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter

import numpy as np

from .. import io as nd_io
from .modeling_utils import _read_config as read_json_object

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # in the order CLIP's pattern tries them


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to 256 printable characters: the printable
    Latin-1 bytes map to themselves, the other 68 to code points 256, 257, … in byte order.
    (So no byte becomes whitespace or a control character inside a token.)"""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def normalize(text: str) -> str:
    """Step 1: NFC, whitespace runs -> " ", lowercase (transformers' normaliser sequence)."""
    text = unicodedata.normalize("NFC", text)
    out, in_space = [], False
    for ch in text:
        if ch.isspace():
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(ch)
            in_space = False
    return "".join(out).lower()


def _kind(ch: str) -> str:
    if ch.isspace():
        return "space"
    cat = unicodedata.category(ch)[0]
    return {"L": "letter", "N": "number"}.get(cat, "other")


def pre_tokenize(text: str) -> list[str]:
    """Step 2: the words of a normalised text, by CLIP's pattern
    ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` (tried in that order at
    each position, leftmost first); what matches nothing (whitespace) is dropped.
    transformers' pattern also lists the two special tokens first, but in its tokenizer
    they never take effect there: verbatim ones were cut out before (step 0), and a
    normalised "<|ENDOFTEXT|>" is split as "<|", "endoftext", "|>" (checked by the
    oracle test), which is what this function does."""
    words, i, n = [], 0, len(text)
    while i < n:
        if text[i] == "'":
            c = next((c for c in CONTRACTIONS if text.startswith(c, i + 1)), None)
            if c:
                words.append("'" + c)
                i += 1 + len(c)
                continue
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if kind != "number":  # letters and "other" are runs; a number is one character
            while j < n and _kind(text[j]) == kind:
                j += 1
        words.append(text[i:j])
        i = j
    return words


def word_symbols(word: str) -> list[str]:
    """Step 3: a word as byte characters, the end-of-word marker on the last one."""
    chars = [BYTE_ENCODER[b] for b in word.encode("utf-8")]
    chars[-1] += END_OF_WORD
    return chars


def bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Step 4: merge the adjacent pair of lowest rank (leftmost first) until none is left."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best, where = None, -1
        for i in range(len(symbols) - 1):
            r = ranks.get((symbols[i], symbols[i + 1]))
            if r is not None and (best is None or r < best):
                best, where = r, i
        if best is None:
            break
        pair = (symbols[where], symbols[where + 1])
        merged, i = [], 0
        while i < len(symbols):  # every occurrence of the best pair, left to right
            if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == pair:
                merged.append(pair[0] + pair[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _read_fast_tokenizer(path: str):
    """(vocab, merges) of the BPE model in a ``tokenizer.json`` (merges as "a b" strings or [a, b] pairs)."""
    model = read_json_object(path).get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: expected a BPE model with a vocab (the 'model' entry)")
    merges = []
    for i, m in enumerate(model.get("merges", [])):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"{path}: merge {i} is not two symbols: {m!r}")
        merges.append((pair[0], pair[1]))
    return model["vocab"], merges


def _read_merges(path: str) -> list[tuple[str, str]]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: a merge is two symbols separated by one space, got {line!r}")
            merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizer:
    """transformers' ``CLIPTokenizer`` (defaults: unk = eos = pad = "<|endoftext|>",
    bos = "<|startoftext|>", ``model_max_length`` 77).

    ``tok(text or list of texts, padding=False | "max_length" | "longest", truncation=False,
    max_length=None)`` -> dict with ``input_ids`` and ``attention_mask`` (lists of lists,
    or int64 arrays with ``return_tensors="np"``)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str = EOS_TOKEN,
                 bos_token: str = BOS_TOKEN, eos_token: str = EOS_TOKEN, pad_token: str = EOS_TOKEN,
                 model_max_length: int = 77):
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in self.encoder.items()}
        for what, tok in (("unk_token", unk_token), ("bos_token", bos_token), ("eos_token", eos_token),
                          ("pad_token", pad_token)):
            if tok not in self.encoder:
                raise ValueError(f"{what} {tok!r} is not in the vocabulary")
        self.merges = [tuple(m) for m in merges]
        self.bpe_ranks = {m: r for r, m in enumerate(self.merges)}
        self.unk_token, self.bos_token, self.eos_token, self.pad_token = unk_token, bos_token, eos_token, pad_token
        self.model_max_length = model_max_length
        self._cache: dict[str, list[int]] = {}

    # -- ids ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def __len__(self):
        return len(self.encoder)

    @property
    def bos_token_id(self) -> int:
        return self.encoder[self.bos_token]

    @property
    def eos_token_id(self) -> int:
        return self.encoder[self.eos_token]

    @property
    def pad_token_id(self) -> int:
        return self.encoder[self.pad_token]

    @property
    def unk_token_id(self) -> int:
        return self.encoder[self.unk_token]

    def _word_ids(self, word: str) -> list[int]:
        if word not in self._cache:
            unk = self.unk_token_id
            # a symbol the vocabulary lacks is unknown from the start and never merges
            # (transformers' BPE looks every initial symbol up before merging)
            symbols = word_symbols(word)
            ids, run = [], []
            for s in symbols + [None]:
                if s is not None and s in self.encoder:
                    run.append(s)
                    continue
                ids += [self.encoder.get(t, unk) for t in bpe(run, self.bpe_ranks)]
                run = []
                if s is not None:
                    ids.append(unk)
            self._cache[word] = ids
        return self._cache[word]

    def _split_special(self, text: str) -> list[str]:
        """The raw text cut around verbatim special tokens (they bypass normalisation and BPE,
        as transformers' added tokens do); "<|ENDOFTEXT|>" is no special token but text."""
        specials = sorted({self.bos_token, self.eos_token, self.unk_token, self.pad_token}, key=len, reverse=True)
        pieces, start, i = [], 0, 0
        while i < len(text):
            s = next((s for s in specials if text.startswith(s, i)), None)
            if s is None:
                i += 1
                continue
            pieces += [text[start:i], s]
            i = start = i + len(s)
        return pieces + [text[start:]]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
        for k, piece in enumerate(self._split_special(text)):
            if k % 2:  # odd pieces are the special tokens
                ids.append(self.encoder[piece])
            else:
                ids += [i for w in pre_tokenize(normalize(piece)) for i in self._word_ids(w)]
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def __call__(self, text, padding=False, truncation: bool = False, max_length: int | None = None,
                 return_tensors: str | None = None, add_special_tokens: bool = True):
        texts = [text] if isinstance(text, str) else list(text)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("CLIPTokenizer: text must be a string or a list of strings")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if max_length is None and (truncation or padding == "max_length"):
            max_length = self.model_max_length
        rows = []
        for t in texts:
            ids = self.encode(t, add_special_tokens=False)
            if truncation:
                ids = ids[:max_length - (2 if add_special_tokens else 0)]
            rows.append([self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids)
        if padding == "max_length":
            width = max_length
        elif padding in (True, "longest"):
            width = max(len(r) for r in rows)
        else:
            width = None
        masks = [[1] * len(r) for r in rows]
        if width is not None:
            masks = [m + [0] * (width - len(r)) for m, r in zip(masks, rows)]
            rows = [r + [self.pad_token_id] * (width - len(r)) for r in rows]
        if return_tensors == "np":
            if len({len(r) for r in rows}) != 1:
                raise ValueError("return_tensors='np' needs rows of one length: pass padding")
            return {"input_ids": np.asarray(rows, dtype=np.int64), "attention_mask": np.asarray(masks, dtype=np.int64)}
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        if isinstance(text, str):
            return {"input_ids": rows[0], "attention_mask": masks[0]}
        return {"input_ids": rows, "attention_mask": masks}

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.decoder[int(i)] for i in ids]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Tokens back to text: byte characters decoded, each "</w>" a space (CLIP's word ends)."""
        specials = {self.bos_token, self.eos_token, self.pad_token, self.unk_token}
        pieces, buf = [], []
        for t in self.convert_ids_to_tokens(ids):
            if t in specials:
                pieces.append(bytes(buf).decode("utf-8", errors="replace"))
                buf = []
                if not skip_special_tokens:
                    pieces.append(t)
                continue
            body = t[:-len(END_OF_WORD)] if t.endswith(END_OF_WORD) else t
            buf += [BYTE_DECODER[c] for c in body]
            if body is not t:
                buf.append(ord(" "))
        pieces.append(bytes(buf).decode("utf-8", errors="replace"))
        return "".join(pieces).strip()

    # -- files -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str, subfolder: str | None = None):
        """Read ``vocab.json`` + ``merges.txt``, or the ``tokenizer.json`` that transformers 5
        saves instead (+ special tokens and model_max_length from ``tokenizer_config.json``)."""
        folder = os.fspath(folder)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        fast_path = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(vocab_path) and os.path.isfile(merges_path):
            vocab, merges = read_json_object(vocab_path), _read_merges(merges_path)
        elif os.path.isfile(fast_path):  # what transformers 5 writes: one file, the BPE model inside
            vocab, merges = _read_fast_tokenizer(fast_path)
            vocab_path = fast_path
        else:
            raise ValueError(f"tokenizer folder {folder!r} has neither vocab.json + merges.txt nor tokenizer.json")
        if not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
        kwargs = {}
        cfg_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            cfg = read_json_object(cfg_path)
            for k in ("unk_token", "bos_token", "eos_token", "pad_token"):
                v = cfg.get(k)
                if isinstance(v, dict):  # transformers' AddedToken form
                    v = v.get("content")
                if isinstance(v, str):
                    kwargs[k] = v
            if isinstance(cfg.get("model_max_length"), int):
                kwargs["model_max_length"] = cfg["model_max_length"]
        return cls(vocab, merges, **kwargs)

    def save_pretrained(self, folder: str) -> None:
        """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        nd_io.save_json(os.path.join(folder, "vocab.json"), self.encoder)
        lines = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
        nd_io.atomic_write(os.path.join(folder, "merges.txt"), lines)
        specials = {"unk_token": self.unk_token, "bos_token": self.bos_token, "eos_token": self.eos_token,
                    "pad_token": self.pad_token}
        nd_io.save_json(os.path.join(folder, "special_tokens_map.json"), specials)
        nd_io.save_json(os.path.join(folder, "tokenizer_config.json"),
                        {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.model_max_length,
                         "do_lower_case": True, **specials})


def build_clip_vocab(texts, num_merges: int | None = None, min_frequency: int = 2):
    """Learn a CLIP-format vocabulary and merge list from a corpus (Sennrich et al. 2016, Alg. 1).

    The vocabulary starts as CLIP's does: the 256 byte characters, then the same 256 with
    "</w>" (every text is representable, nothing is ever unknown); each learnt merge
    appends its merged symbol; the special tokens come last. Words come from steps 1–3 of
    the tokeniser, counted over the corpus; each round merges the most frequent adjacent
    pair (ties: the pair first seen in corpus order), until ``num_merges`` merges or no pair
    occurs ``min_frequency`` times. Deterministic for a given corpus.

    Returns (vocab dict, merges list), ready for ``CLIPTokenizer(vocab, merges)``.
    """
    base = [BYTE_ENCODER[b] for b in range(256)]
    vocab_list = base + [c + END_OF_WORD for c in base]
    words = Counter()
    for t in texts:
        words.update(w for w in pre_tokenize(normalize(t)) if w not in (BOS_TOKEN, EOS_TOKEN))
    corpus = [(word_symbols(w), n) for w, n in words.items()]  # insertion order = first appearance
    merges = []
    while num_merges is None or len(merges) < num_merges:
        pairs = Counter()
        for symbols, n in corpus:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        pair, count = max(pairs.items(), key=lambda kv: kv[1])  # first maximum in insertion order
        if count < min_frequency:
            break
        merges.append(pair)
        if pair[0] + pair[1] not in vocab_list:  # ("a", "bc") and ("ab", "c") make the same symbol
            vocab_list.append(pair[0] + pair[1])
        ranks = {pair: 0}
        corpus = [(bpe(symbols, ranks), n) for symbols, n in corpus]
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(vocab_list)}, merges
