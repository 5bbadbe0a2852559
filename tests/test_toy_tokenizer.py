"""The toy tokenizer: HF format, offline AutoTokenizer, exact round trip."""

from __future__ import annotations

import numpy as np
import pytest
from memento_lens.runtime.config import MementoTokenIds
from memento_lens.runtime.toy.task import BOS, EOS, PAD, TOY_TOKENS, VOCAB, sample
from memento_lens.runtime.toy.tokenizer import TOKENIZER_VOCAB, UNK, ids_to_text, save_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    d = save_tokenizer(tmp_path_factory.mktemp("tok"))
    assert (d / "tokenizer.json").exists()
    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def test_ids_follow_vocab(tok):
    vocab = tok.get_vocab()
    assert [vocab[t] for t in VOCAB] == list(range(len(VOCAB)))
    assert vocab[UNK] == len(VOCAB) == len(TOKENIZER_VOCAB) - 1
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, PAD)
    assert MementoTokenIds.from_tokenizer(tok).delimiters == TOY_TOKENS.delimiters
    for t in ("<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>"):
        assert t in tok.all_special_tokens


def test_round_trip(tok):
    batch = sample(20, np.random.default_rng(3))
    for ids in batch.token_ids:
        text = ids_to_text(ids)
        enc = tok.encode(text, add_special_tokens=False)
        assert enc == ids.tolist()
        assert tok.decode(enc) == text


def test_unknown_word_is_unk(tok):
    assert tok.encode("1 banana 2", add_special_tokens=False) == [VOCAB.index("1"), len(VOCAB), VOCAB.index("2")]
