"""Progress accounting (pure of any terminal): bars whose totals end where the work ended."""

from __future__ import annotations

import pytest
from memento_lens.runtime.progress import StageBars, bar_for

pytestmark = pytest.mark.integration


class RecordingBar:
    """A caller's bar: records what the library reports to it."""

    def __init__(self, total=None):
        self.n, self.total, self.descriptions, self.totals = 0, total, [], []

    def update(self, n=1):
        self.n += n

    def set_description(self, text):
        self.descriptions.append(text)

    def set_total(self, total):
        self.total = total
        self.totals.append(total)

    def close(self):
        pass


def test_generate_eta_follows_the_steps_batches_take(tmp_path):
    """The job's total is re-estimated from the steps finished batches took, and ends equal to the steps run
    (an ETA that assumed every batch runs to --max-new-tokens was 2x high on the toy); the capture pass is named."""
    from memento_lens.runtime.capture import default_captures
    from memento_lens.runtime.generate import SamplingConfig
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.runs import generate_to_run
    from memento_lens.runtime.toy.task import EOS, TOY_MASKING

    toy = load_model("toy")
    bar = RecordingBar()
    limit = 400
    generate_to_run(
        toy.model,
        [[toy.tokenizer.bos_token_id]] * 4,
        TOY_MASKING,
        toy.require_tokens(),
        tmp_path / "run",
        sampling=SamplingConfig(seed=0, max_new_tokens=limit),
        eos_token_id=EOS,
        captures=default_captures(),
        tokenizer=toy.tokenizer,
        batch_size=2,
        progress=bar,
    )
    assert bar.n < 2 * limit  # the toy's sequences stop before the limit
    assert bar.totals and bar.totals[-1] == bar.n  # the estimate ends where the work ended
    assert any(d.startswith("capture batch") for d in bar.descriptions)


def test_stage_bars_are_silent_when_disabled_and_borrowed_bars_pass_totals_on():
    with StageBars(enabled=False) as bars:
        bars("probes", 1, 3)  # no terminal output, no error
        assert bars._bars == {}
    mine = RecordingBar(10)
    lent = bar_for(mine, 10, "x")
    lent.update(3)
    lent.set_total(7)
    assert (mine.n, mine.total, lent.n, lent.total) == (3, 7, 3, 7)
    lent.close()  # a borrower never closes the lender's bar
