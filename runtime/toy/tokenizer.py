"""The toy tokenizer: word level over :data:`~.task.VOCAB`, built locally with ``tokenizers``.

Tokens are separated by whitespace (``"<bos> <|block_start|> 3 1 4"``). Ids equal the positions in
``VOCAB``; bos/eos/pad and the four memento tokens are special tokens. Saved in HF format, so
``AutoTokenizer.from_pretrained(directory)`` loads it offline. No post-processor: ``encode`` returns
exactly the tokens of the text (write ``<bos>`` yourself). Words outside the vocabulary map to
``<unk>``, the one token added after ``VOCAB`` (id 17; never seen in training).
"""

from __future__ import annotations

from pathlib import Path

from ..config import MEMENTO_TOKEN_STRINGS
from .task import VOCAB

UNK = "<unk>"
# Tokenizer (and model) vocabulary: the task's VOCAB, then <unk> so unknown words encode instead of raising.
TOKENIZER_VOCAB: tuple[str, ...] = (*VOCAB, UNK)


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over ``TOKENIZER_VOCAB`` (ids = ``VOCAB`` order, then ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TOKENIZER_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token=UNK,
        additional_special_tokens=list(MEMENTO_TOKEN_STRINGS),
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    return tok


def save_tokenizer(directory: str | Path) -> Path:
    """Write the toy tokenizer in HF format into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(str(directory))
    return directory


def ids_to_text(token_ids) -> str:
    """Space-joined token strings of ``token_ids`` (the inverse of the tokenizer's ``encode``)."""
    return " ".join(TOKENIZER_VOCAB[int(i)] for i in token_ids)
