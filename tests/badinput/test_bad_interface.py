"""One interface across commands: one spelling per option, help text everywhere, flags shown as flags, the
masking default from the model, capture on by default, and the right result where a wrong one used to be silent."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from memento_lens.cli import app

from .badinput_harness import GOOD_IDS, write_jsonl


def _commands():
    def walk(c, path):
        if hasattr(c, "commands"):
            for name, sub in c.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, c

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()


def test_every_option_has_help_text():
    missing = [
        (" ".join(path), p.opts)
        for path, c in COMMANDS
        for p in c.params
        if p.param_type_name == "option" and not (p.help or "").strip()
    ]
    assert not missing, missing


def test_one_spelling_per_option_across_commands():
    spellings: dict[str, set] = {}
    for _, c in COMMANDS:
        for p in c.params:
            if p.param_type_name == "option":
                spellings.setdefault(p.name, set()).add(tuple(sorted(p.opts + p.secondary_opts)))
    assert {k: v for k, v in spellings.items() if len(v) > 1} == {}
    # the masking switch is the same two-sided flag everywhere it appears
    assert spellings["mask_delimiters"] == {("--keep-delimiters", "--mask-delimiters")}


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in COMMANDS])
def test_help_shows_flags_as_flags(path):
    res = CliRunner().invoke(app, [*path.split(), "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output
    assert "Traceback" not in res.output


def test_flag_given_a_value_is_a_usage_error_naming_it(tmp_path):
    res = CliRunner().invoke(app, ["verify", "--overwrite", "true"])
    assert res.exit_code == 2 and "true" in res.output
    helptext = CliRunner().invoke(app, ["verify", "--help"], terminal_width=200).output
    assert "--overwrite  " in helptext or "--overwrite\n" in helptext  # no value placeholder after the flag


def test_schedule_help_shows_its_json_example_intact():
    out = CliRunner().invoke(app, ["schedule", "--help"], terminal_width=100).output
    example = [ln.strip() for ln in out.splitlines() if ln.strip().startswith(("{", '"', "}"))]
    text = " ".join(example)
    case = json.loads(text)  # the example is valid JSON, line breaks and all
    assert set(case) == {"config", "token_ids", "prompt", "generated"}
    res = CliRunner().invoke(app, ["schedule", "--json"], input=text)
    assert res.exit_code == 0 and json.loads(res.stdout), res.output


def test_toy_masking_is_the_default_and_contradicting_it_warns(tmp_path):
    runner = CliRunner()
    base = ["replay", "--toy", "2", "--threads", "1", "--no-capture"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["masking"]
    assert cfg["mask_delimiters"] is False  # what the toy was trained with
    assert "warning" not in res.stderr
    res = runner.invoke(app, [*base, "--mask-delimiters", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0 and "warning: --mask-delimiters contradicts model 'toy'" in res.stderr


def test_generate_and_replay_capture_by_default(tmp_path):
    runner = CliRunner()
    traces = write_jsonl(tmp_path / "t.jsonl", [{"trace": "a", "token_ids": GOOD_IDS, "prompt_len": 1}])
    tiny = ["--model", "random:tiny", "--keep-delimiters", "--threads", "1"]
    r1 = runner.invoke(app, ["replay", *tiny, "--traces", str(traces), "--out", str(tmp_path / "r")])
    g1 = runner.invoke(app, ["generate", *tiny, "-p", "w6", "--max-new-tokens", "3", "--out", str(tmp_path / "g")])
    assert r1.exit_code == 0 and g1.exit_code == 0, (r1.output, g1.output)
    for run in ("r", "g"):
        caps = json.loads((tmp_path / run / "manifest.json").read_text())["config"]["captures"]
        assert caps, f"{run}: capture should be on by default"


def test_generate_n_makes_n_traces_without_a_prompt(tmp_path):
    res = CliRunner().invoke(
        app,
        ["generate", "--model", "random:tiny", "--keep-delimiters", "--n", "3", "--max-new-tokens", "3"]
        + ["--no-capture", "--threads", "1", "--out", str(tmp_path / "g")],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["info"]["n_traces"] == 3


@pytest.mark.parametrize("cmd", ["kv", "stats"])
def test_kv_and_stats_accept_a_run_directory(good_run, cmd):
    res = CliRunner().invoke(app, [cmd, str(good_run), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ingest"]["n_ingested"] == 2


def test_block_numbering_is_stated_where_blocks_are_named():
    from memento_lens.cli_options import BLOCK_NUMBERING

    assert "0" in BLOCK_NUMBERING and "1-based" in BLOCK_NUMBERING
    helps = {" ".join(p): c.get_help(typer.Context(c)) for p, c in COMMANDS if p in (["stats"], ["schedule"])}
    assert all("0-based" in h for h in helps.values()), helps


# -- results that used to be silently wrong ----------------------------------------------------------------
def test_a_span_cut_by_the_length_limit_keeps_its_last_token_as_content():
    from memento_lens.runtime.model import RANDOM_TOKENS as T
    from memento_lens.runtime.trace import Trace

    block_cut = Trace("b", [0, 1, 7, 8, 9], 1).roles(T).role.tolist()
    assert block_cut == ["prompt", "delimiter", "block", "block", "block"]
    memento_cut = Trace("m", [0, 1, 7, 2, 3, 9, 10], 1).roles(T).role.tolist()
    assert memento_cut[-2:] == ["memento", "memento"]
    closed = Trace("c", [0, 1, 7, 2, 3, 9, 4], 1).roles(T).role.tolist()
    assert closed[-1] == "delimiter"  # a real <|summary_end|> still is one


def test_generation_cut_inside_a_block_labels_content_not_delimiter(tmp_path):
    import torch
    from memento_lens.runtime.generate import SamplingConfig, generate
    from memento_lens.runtime.model import load_model

    lm = load_model("random:tiny")
    cfg = __import__("memento_lens.runtime.config", fromlist=["x"]).BlockMaskingConfig(
        mask_delimiters=False, require_assistant_section=False
    )
    torch.manual_seed(0)
    res = generate(lm.model, [[0]], cfg, lm.tokens, forced=[[1, 7, 8, 9]], sampling=SamplingConfig(max_new_tokens=4))[0]
    roles = res.trace.roles(lm.tokens, cfg).role.tolist()
    assert roles[-1] == "block"


def test_float_token_ids_are_not_truncated(tmp_path):
    from memento_lens.runtime.errors import InputFileError
    from memento_lens.runtime.validate import check_token_ids

    with pytest.raises(InputFileError, match=r"3\.7"):
        check_token_ids([1, 3.7], "f.jsonl: line 1: token_ids")
    assert check_token_ids([1, 3], "x") == [1, 3]
