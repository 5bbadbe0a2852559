"""Passcode features: conditions and bad input, extraction equals the dense replay, the causal control stays at
chance where leakage is impossible by construction, feature caching, real-trace substitution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_toy_model
from memento_lens.probes.features import (
    MementoFeatures,
    ProbeInputError,
    extract_memento_kv,
    passcode_conditions,
    resolve_layers,
    toy_memento_positions,
    toy_passcode_batch,
)
from memento_lens.probes.models import make_probe
from memento_lens.probes.train import TrainConfig, score_probe
from memento_lens.runtime.dense import dense_forward
from memento_lens.runtime.toy.evaluate import toy_visibility
from memento_lens.runtime.toy.task import ToyLayout


def test_conditions_follow_the_paper_mapping():
    conds, skips = passcode_conditions(1, 10, range(1, 8))
    by = {(c.name, c.distance): c.memento_block for c in conds}
    assert by[("causal_control", -1)] == 0 and by[("direct", 0)] == 1
    assert [by[("masked", k)] for k in range(1, 8)] == [2, 3, 4, 5, 6, 7, 8]
    assert skips == []


def test_distance_beyond_the_trace_is_skipped_and_reported():
    conds, skips = passcode_conditions(1, 4, [1, 2, 5])
    assert {c.distance for c in conds if c.name == "masked"} == {1, 2}
    assert len(skips) == 1 and skips[0].distance == 5 and "beyond" in skips[0].reason


def test_masked_needs_three_blocks():
    with pytest.raises(ProbeInputError, match="at least 3 blocks"):
        passcode_conditions(1, 2)
    conds, _ = passcode_conditions(1, 2, conditions=("direct", "causal_control"))
    assert len(conds) == 2


def test_layer_out_of_range_is_a_clear_error():
    assert resolve_layers([-1, 0], 4) == [0, 3]
    assert resolve_layers(None, 3) == [0, 1, 2]
    with pytest.raises(ProbeInputError, match="--layers: layer 4 out of range"):
        resolve_layers([4], 4)


def test_extracted_features_equal_the_dense_replay_kv():
    model = small_toy_model()
    layout = ToyLayout()
    batch, labels = toy_passcode_batch(6, 0, layout)
    vis = toy_visibility("memento", layout)
    pos = toy_memento_positions(layout, [0, 1, 2])
    feats = extract_memento_kv(
        model, batch.token_ids, vis, pos, [0, 1], labels, batch_size=4, store_dtype=torch.float32
    )
    ref = dense_forward(model, torch.from_numpy(batch.token_ids), vis)
    got = feats.kv[(2, 1)]  # [n, kvh, P, 2d]
    p = torch.as_tensor(pos[2])
    torch.testing.assert_close(got[..., :16], ref.keys[1][:, :, p], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[..., 16:], ref.values[1][:, :, p], rtol=1e-4, atol=1e-5)
    assert feats.matrix(2, 1).shape == (6, 1 * 5 * 32)
    assert feats.matrix(2, 1, head=0).shape == (6, 5 * 32)
    with pytest.raises(ProbeInputError, match="--heads"):
        feats.matrix(2, 1, head=3)


def test_feature_cache_roundtrip(tmp_path):
    from memento_lens.runtime.rundir.store import RunStore

    model = small_toy_model()
    layout = ToyLayout()
    batch, labels = toy_passcode_batch(5, 1, layout)
    feats = extract_memento_kv(
        model, batch.token_ids, toy_visibility("memento", layout), toy_memento_positions(layout, [0, 1]), [0, 1], labels
    )
    store = RunStore.create(tmp_path / "run", "test", {})
    feats.save(store)
    back = MementoFeatures.load(RunStore.open(tmp_path / "run"))
    assert set(back.kv) == set(feats.kv)
    torch.testing.assert_close(back.kv[(1, 0)], feats.kv[(1, 0)])
    torch.testing.assert_close(back.labels, feats.labels)
    np.testing.assert_array_equal(back.positions[1], layout.memento_span(1))


def test_causal_control_stays_at_chance_where_leakage_is_impossible():
    """Memento 0 is computed before block 1 exists: no model can encode block 1's digits there."""
    model = small_toy_model(seed=3)
    layout = ToyLayout()
    batch, labels = toy_passcode_batch(1500, 5, layout)
    feats = extract_memento_kv(
        model,
        batch.token_ids,
        toy_visibility("memento", layout),
        toy_memento_positions(layout, [0, 1]),
        [1],
        labels,
        batch_size=500,
    )
    cfg = TrainConfig(max_epochs=15, patience=3, batch_size=256, n_boot=300)
    for probe in ("linear", "mlp"):
        ctrl = score_probe(make_probe(probe), feats.matrix(0, 1), labels, cfg, seed=0, control=False)
        assert 0.06 < ctrl.accuracy < 0.14, (probe, ctrl)
        assert ctrl.ci_low < 0.1 + 0.02
    direct = score_probe(make_probe("linear"), feats.matrix(1, 1), labels, cfg, seed=0, control=False)
    assert direct.accuracy > 0.2, direct  # the same pipeline does see block 1 in its own memento


class _CharTokenizer:
    """Characters as tokens; ``merge_zeros`` makes "00" one token (so some passcodes change the token count)."""

    specials = ["<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>"]

    def __init__(self, merge_zeros: bool = False):
        self.vocab = {t: i for i, t in enumerate(self.specials)}
        self.merge_zeros = merge_zeros

    def get_vocab(self):
        return dict(self.vocab)

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            piece = "00" if self.merge_zeros and text.startswith("00", i) else text[i]
            out.append(self.vocab.setdefault(piece, len(self.vocab)))
            i += len(piece)
        return out


TRACE = {
    "problem": "p",
    "segments": [
        {"type": "block", "text": "aa"},
        {"type": "summary", "text": "x"},
        {"type": "block", "text": "bb"},
        {"type": "summary", "text": "y"},
        {"type": "block", "text": "cc"},
        {"type": "summary", "text": "z"},
        {"type": "answer", "text": "ok"},
    ],
}


def _tokens(tok):
    from memento_lens.runtime.config import MementoTokenIds

    v = tok.get_vocab()
    return MementoTokenIds(v["<|block_start|>"], v["<|block_end|>"], v["<|summary_start|>"], v["<|summary_end|>"])


def _trace(tok):
    """TRACE as the trace layer gives it (a Trace of token ids: prompt, then each block and memento)."""
    from memento_lens.runtime.trace import Trace

    bs, be, ss, se = (tok.get_vocab()[t] for t in _CharTokenizer.specials)
    ids = tok.encode(TRACE["problem"])
    prompt_len = len(ids)
    segs = TRACE["segments"]
    for b, m in zip(segs[0:6:2], segs[1:6:2]):
        ids += [bs, *tok.encode(b["text"]), be, ss, *tok.encode(m["text"]), se]
    return Trace("t", ids + tok.encode(segs[-1]["text"]), prompt_len)


def test_real_trace_substitution_places_the_passcode_in_block_1():
    from memento_lens.probes.real import build_passcode_trace, passcode_samples
    from memento_lens.runtime.toy.task import TOY_MASKING

    tok = _CharTokenizer()
    pt = build_passcode_trace(_trace(tok), tok, _tokens(tok), TOY_MASKING, target_block=1)
    assert pt.n_blocks == 3
    b1 = pt.schedule.blocks[1]
    assert b1.start < pt.passcode_slot[0] and pt.passcode_slot[-1] < b1.end
    s = passcode_samples(pt, tok, 50, seed=0)
    assert s.skipped == 0 and s.token_ids.shape == (50, len(pt.token_ids))
    inv = {i: t for t, i in tok.get_vocab().items()}
    row = "".join(inv[int(i)] for i in s.token_ids[7, pt.passcode_slot])
    assert row == "".join(map(str, s.labels[7]))


def test_passcode_changing_the_token_count_is_skipped_and_counted():
    from memento_lens.probes.real import build_passcode_trace, passcode_samples
    from memento_lens.runtime.toy.task import TOY_MASKING

    tok = _CharTokenizer(merge_zeros=True)  # template 13579 -> 5 tokens; passcodes with "00" -> fewer
    pt = build_passcode_trace(_trace(tok), tok, _tokens(tok), TOY_MASKING, target_block=1)
    s = passcode_samples(pt, tok, 200, seed=0)
    assert s.skipped > 0 and len(s.labels) == 200 - s.skipped
    assert "token count" in next(iter(s.skip_reasons))


def test_trace_without_the_target_block_is_an_error():
    from memento_lens.probes.real import build_passcode_trace
    from memento_lens.runtime.toy.task import TOY_MASKING

    tok = _CharTokenizer()
    with pytest.raises(ProbeInputError, match="no block 5"):
        build_passcode_trace(_trace(tok), tok, _tokens(tok), TOY_MASKING, target_block=5)


def test_tokenizer_that_cannot_represent_digits_is_an_error():
    from memento_lens.probes.real import build_passcode_trace, passcode_samples
    from memento_lens.runtime.toy.task import TOY_MASKING

    class _Unk(_CharTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [0 if ch.isdigit() else 9 for ch in text]

    tok = _Unk()
    pt = build_passcode_trace(_trace(tok), tok, _tokens(tok), TOY_MASKING, target_block=1)
    with pytest.raises(ProbeInputError, match="cannot be represented"):
        passcode_samples(pt, tok, 20, seed=0)
