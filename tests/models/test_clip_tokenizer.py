"""CLIPTokenizer: same ids as transformers' CLIPTokenizer on vocabularies the test writes,
and the vocabulary builder's files load in transformers."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npdiff.models.clip_tokenizer import (BYTE_DECODER, BYTE_ENCODER, CLIPTokenizer, build_clip_vocab, normalize,
                                          pre_tokenize)

CAPTIONS = ["a small red circle at the top left and a blue square", "a large green triangle at the center",
            "two blue squares at the bottom right", "a small yellow circle", "a purple triangle and a red square"]
TRICKY = ["It's a RED circle!!", "café naïve 123 4.5", "Hello   World\t\nagain", "they'll've we'd 'S 'x",
          "emoji 😀 ok", "<|endoftext|> inside", "x²³ ٣ numbers", "", "   ", "a" * 60,
          "MiXeD_case-words, and; punctuation...?!", "Ǆ ﬁ e\u0301",
          "'<|endoftext|>x", "<|ENDOFTEXT|> is text", "<|startoftext|><|endoftext|>"]


def test_byte_table_is_a_bijection_onto_printable_characters():
    assert sorted(BYTE_ENCODER) == list(range(256)) and len(set(BYTE_ENCODER.values())) == 256
    assert all(not c.isspace() and c.isprintable() for c in BYTE_ENCODER.values())
    assert all(BYTE_DECODER[BYTE_ENCODER[b]] == b for b in range(256))


def test_normalize_and_pre_tokenize():
    assert normalize("A  B\t\nC") == "a b c"
    assert pre_tokenize("it's 12 red-circles!! <|endoftext|>") == \
        ["it", "'s", "1", "2", "red", "-", "circles", "!!", "<|", "endoftext", "|>"]


def test_builder_vocabulary_layout():
    vocab, merges = build_clip_vocab(CAPTIONS * 2)
    assert sorted(vocab.values()) == list(range(len(vocab)))  # dense ids
    assert vocab["<|startoftext|>"] == len(vocab) - 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert len(merges) > 10 and all(a + b in vocab for a, b in merges)
    tok = CLIPTokenizer(vocab, merges)
    ids = tok("a small red circle")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "a small red circle"
    assert len(ids) < len("a small red circle")  # the merges compress the caption words
    assert build_clip_vocab(CAPTIONS * 2) == (vocab, merges)  # deterministic


def test_padding_truncation_and_arrays():
    vocab, merges = build_clip_vocab(CAPTIONS)
    tok = CLIPTokenizer(vocab, merges, model_max_length=8)
    out = tok(["a red circle", CAPTIONS[0]], padding="max_length", truncation=True, return_tensors="np")
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == np.int64
    assert ids[0, 0] == tok.bos_token_id and ids[1, -1] == tok.eos_token_id  # truncation keeps EOS
    n0 = int(mask[0].sum())
    assert ids[0, n0 - 1] == tok.eos_token_id and (ids[0, n0:] == tok.pad_token_id).all() and not mask[0, n0:].any()
    with pytest.raises(ValueError, match="padding"):
        tok(["a", "b c d"], return_tensors="np")


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers", reason="oracle tests need transformers")


def _pair(hf, tmp_path, vocab, merges, **kw):
    ours = CLIPTokenizer(vocab, merges, **kw)
    ours.save_pretrained(tmp_path)
    ref = hf.CLIPTokenizer.from_pretrained(str(tmp_path))
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again.encoder == ours.encoder and again.merges == ours.merges
    return again, ref


def _assert_same(ours, ref, texts, **kw):
    a, b = ours(texts, **kw), ref(texts, **kw)
    assert a["input_ids"] == b["input_ids"], texts
    assert a["attention_mask"] == b["attention_mask"], texts


def test_same_ids_as_transformers_on_built_vocabulary(hf, tmp_path):
    vocab, merges = build_clip_vocab(CAPTIONS * 3 + TRICKY)
    ours, ref = _pair(hf, tmp_path, vocab, merges)
    for t in CAPTIONS + TRICKY:
        _assert_same(ours, ref, t)
    _assert_same(ours, ref, CAPTIONS + TRICKY, padding="max_length", max_length=12, truncation=True)
    _assert_same(ours, ref, CAPTIONS, padding="longest")
    assert ours.decode(ours(CAPTIONS[0])["input_ids"], skip_special_tokens=True) == \
        ref.decode(ref(CAPTIONS[0])["input_ids"], skip_special_tokens=True)


def test_same_ids_as_transformers_on_a_hand_written_vocabulary(hf, tmp_path):
    """A vocabulary without most bytes: unknown symbols become <|endoftext|> (the unk
    token) one by one and never take part in merges, as in transformers."""
    toks = ["a", "b", "c", "a</w>", "b</w>", "c</w>", "ab", "ab</w>", "abc</w>", "ba</w>", "!</w>",
            "<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(toks)}
    merges = [("a", "b"), ("ab", "c</w>"), ("a", "b</w>"), ("b", "a</w>")]
    ours, ref = _pair(hf, tmp_path, vocab, merges)
    for t in ["abc ab ba", "ABC!", "abdc", "xab", "a b c", "abab", "ba ba!", "ab?c", "dab"]:
        _assert_same(ours, ref, t)


@settings(max_examples=60)
@given(st.lists(st.sampled_from(list("abcdeRGBxyz  '!?,.-_0123456789\t\néüß😀²") + ["'s", "'ll", "<|endoftext|>"]),
                max_size=30).map("".join))
def test_same_ids_as_transformers_on_generated_text(hf, tmp_path_factory, text):
    tok = _BUILT.get("pair")
    if tok is None:
        vocab, merges = build_clip_vocab(CAPTIONS * 3 + TRICKY + ["abcde xyz rgb 42 's 'll"] * 3)
        tok = _BUILT["pair"] = _pair(hf, tmp_path_factory.mktemp("tok"), vocab, merges)
    _assert_same(*tok, text)
    _assert_same(*tok, [text, "a red circle"], padding="max_length", max_length=7, truncation=True)


_BUILT = {}


def test_transformers_reads_our_special_tokens(hf, tmp_path):
    vocab, merges = build_clip_vocab(CAPTIONS)
    ours, ref = _pair(hf, tmp_path, vocab, merges, model_max_length=16)
    assert ref.bos_token_id == ours.bos_token_id and ref.eos_token_id == ours.eos_token_id
    assert ref.pad_token_id == ours.pad_token_id and ref.model_max_length == 16 == ours.model_max_length
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "CLIPTokenizer"


def test_reads_the_folder_transformers_saves(hf, tmp_path):
    """transformers 5 saves tokenizer.json (the BPE model inside), not vocab.json + merges.txt."""
    vocab, merges = build_clip_vocab(CAPTIONS)
    ours, ref = _pair(hf, tmp_path / "ours", vocab, merges, model_max_length=16)
    ref.save_pretrained(tmp_path / "theirs")
    back = CLIPTokenizer.from_pretrained(tmp_path / "theirs")
    assert back.encoder == ours.encoder and back.merges == ours.merges and back.model_max_length == 16
    _assert_same(back, ref, CAPTIONS, padding="max_length", truncation=True)
    (tmp_path / "theirs" / "tokenizer.json").write_text('{"model": {"type": "WordPiece"}}')
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "theirs" / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="expected a BPE model"):
        CLIPTokenizer.from_pretrained(tmp_path / "theirs")
