"""Bad models (paths, truncated/corrupt weights, unknown specs) and bad configs (--config files, schedule cases)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from memento_lens.runtime.errors import ConfigError, InputFileError, MementoLensError, ModelError

from .badinput_harness import GOOD_IDS, cases, run_case, write_jsonl

TOY_FINAL = Path(__import__("memento_lens.runtime.toy.shipped", fromlist=["x"]).WEIGHTS_DIR) / "final"


def _model_dir(workdir: Path, damage: str) -> Path:
    d = workdir / "m"
    shutil.copytree(TOY_FINAL, d)
    w = d / "model.safetensors"
    if damage == "truncated":
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        w.write_bytes(b"not a safetensors file")
    elif damage == "empty":
        w.write_bytes(b"")
    elif damage == "missing-weights":
        w.unlink()
    elif damage == "bad-config":
        (d / "config.json").write_text("{not json")
    elif damage == "config-list":
        (d / "config.json").write_text("[1, 2]")
    elif damage == "no-config":
        (d / "config.json").unlink()
    elif damage in ("field-type", "field-negative", "field-float"):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update({"field-type": {"num_hidden_layers": "four"}, "field-negative": {"vocab_size": -3}}.get(damage, {}))
        cfg.update({"hidden_size": 12.5} if damage == "field-float" else {})
        (d / "config.json").write_text(json.dumps(cfg))
    elif damage == "tokenizer-garbage":
        (d / "tokenizer.json").write_text("{not json")
    elif damage == "no-tokenizer":
        for f in d.glob("tokenizer*"):
            f.unlink()
    return d


DAMAGE = ["truncated", "garbage", "empty", "missing-weights", "bad-config", "config-list", "no-config"]
# A damaged checkpoint names the file and the field at fault (issue 16: one line, not a validation traceback).
NAMED_DAMAGE = [
    ("field-type", "config.json", "num_hidden_layers"),
    ("field-negative", "config.json", "vocab_size"),
    ("field-float", "config.json", "hidden_size"),
    ("tokenizer-garbage", "tokenizer.json", "does not load"),
]


@pytest.mark.parametrize("damage,file,field", NAMED_DAMAGE)
def test_damaged_checkpoint_names_file_and_field(cli, workdir, damage, file, field):
    d = _model_dir(workdir, damage)
    run_case(cli, workdir, ["verify", "--model", d, "--threads", "1"], ModelError, str(d / file), field)


def test_checkpoint_without_tokenizer_says_so(cli, workdir):
    """No tokenizer files: not an empty one-token tokenizer and a misleading 'lacks the memento tokens'."""
    d = _model_dir(workdir, "no-tokenizer")
    run_case(cli, workdir, ["verify", "--model", d, "--threads", "1"], ConfigError, str(d), "has no tokenizer")


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("cmd", ["verify", "generate"])
def test_damaged_model_directory(cli, workdir, damage, cmd):
    d = _model_dir(workdir, damage)
    args = ["verify", "--model", d] if cmd == "verify" else ["generate", "--model", d, "-p", "a", "--n", "1"]
    run_case(cli, workdir, [*args, "--threads", "1"], ModelError, str(d))


MODEL_SPECS = [
    (["--model", "does/not/exist"], ModelError, "does/not/exist"),
    (["--model", "random:huge"], ModelError, "random:huge"),
    (["--model", "toy@step-999999"], MementoLensError, "step-999999"),
]


@pytest.mark.parametrize("extra,cls,culprits", cases(MODEL_SPECS))
def test_bad_model_spec(cli, workdir, extra, cls, culprits):
    run_case(cli, workdir, ["verify", "--threads", "1", *extra], cls, *culprits)


def test_model_dir_is_a_file(cli, workdir):
    (workdir / "weights.bin").write_bytes(b"\0" * 8)
    run_case(cli, workdir, ["verify", "--model", workdir / "weights.bin"], ModelError, "weights.bin")


# -- --config files -------------------------------------------------------------------------------------------
CONFIGS = [
    ("{not json", ConfigError, "invalid JSON"),
    ("[1, 2]", ConfigError, "expected a JSON object"),
    ('"memento"', ConfigError, "expected a JSON object"),
    ("{}", ConfigError, "mask_delimiters"),
    ('{"mask_delimiters": null}', ConfigError, "mask_delimiters"),
    ('{"mask_delimiters": "false"}', ConfigError, "mask_delimiters"),
    ('{"mask_delimiters": 0}', ConfigError, "mask_delimiters"),
    ('{"mask_delimiters": false, "keep_last_n_blocks": "2"}', ConfigError, "keep_last_n_blocks"),
    ('{"mask_delimiters": false, "keep_last_n_blocks": true}', ConfigError, "keep_last_n_blocks"),
    ('{"mask_delimiters": false, "keep_last_n_blocks": -5}', ConfigError, "keep_last_n_blocks"),
    ('{"mask_delimiters": false, "keep_last_n_blocks": 1.5}', ConfigError, "keep_last_n_blocks"),
    ('{"mask_delimiters": false, "max_block_tokens": -1}', ConfigError, "max_block_tokens"),
    ('{"mask_delimiters": false, "restart_mode": "yes"}', ConfigError, "restart_mode"),
    ('{"mask_delimiters": false, "compact_on_summary_end": 1}', ConfigError, "compact_on_summary_end"),
    ('{"mask_delimiters": false, "keep_blocks": 1}', ConfigError, "keep_blocks"),
]


@pytest.mark.parametrize("text,cls,culprit", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_bad_config_file(cli, workdir, text, cls, culprit):
    cfg = workdir / "cfg.json"
    cfg.write_text(text)
    traces = write_jsonl(workdir / "t.jsonl", [{"trace": "a", "token_ids": GOOD_IDS, "prompt_len": 1}])
    args = ["replay", "--model", "random:tiny", "--traces", traces, "--config", cfg, "--threads", "1"]
    run_case(cli, workdir, args, cls, culprit)


def test_config_file_missing(cli, workdir):
    run_case(cli, workdir, ["replay", "--toy", "2", "--config", workdir / "nope.json"], InputFileError, "nope.json")


def test_config_file_not_utf8(cli, workdir):
    (workdir / "c.json").write_bytes(b'{"mask_delimiters": \xff}')
    run_case(
        cli, workdir, ["replay", "--toy", "2", "--config", workdir / "c.json"], InputFileError, "c.json", "offset 20"
    )


def test_config_file_is_a_directory(cli, workdir):
    (workdir / "cdir").mkdir()
    run_case(cli, workdir, ["replay", "--toy", "2", "--config", workdir / "cdir"], InputFileError, "cdir")


# -- schedule (model-free) ------------------------------------------------------------------------------------
TOK = {"block_start": 1, "block_end": 2, "summary_start": 3, "summary_end": 4}
CFG = {"mask_delimiters": False}
SCHEDULE = [
    ({"config": CFG, "token_ids": TOK, "prompt": [[1, 2]], "generated": []}, InputFileError, "prompt"),
    ({"config": CFG, "token_ids": TOK, "prompt": [0], "generated": [[1], [2]]}, InputFileError, "generated"),
    ({"config": CFG, "token_ids": TOK, "prompt": [0], "generated": [1, 3.7]}, InputFileError, "generated[1]"),
    ({"config": CFG, "token_ids": TOK, "prompt": [0], "generated": ["w1"]}, InputFileError, "generated[0]"),
    ({"config": CFG, "token_ids": TOK, "prompt": [0], "generated": [True]}, InputFileError, "generated[0]"),
    ({"config": CFG, "token_ids": TOK, "prompt": [-1], "generated": []}, InputFileError, "prompt[0]"),
    ({"config": CFG, "token_ids": TOK, "prompt": "0 1 2", "generated": []}, InputFileError, "prompt"),
    ({"config": CFG, "token_ids": TOK, "prompt": {"a": 1}, "generated": []}, InputFileError, "prompt"),
    ({"config": CFG, "token_ids": [1, 2, 3, 4], "prompt": [0]}, ConfigError, "token_ids"),
    ({"config": CFG, "token_ids": {**TOK, "block_start": "1"}, "prompt": [0]}, ConfigError, "block_start"),
    ({"config": CFG, "token_ids": {**TOK, "block_end": 2.5}, "prompt": [0]}, ConfigError, "block_end"),
    ({"config": CFG, "token_ids": {**TOK, "summary_end": -4}, "prompt": [0]}, ConfigError, "summary_end"),
    ({"config": CFG, "token_ids": {"block_start": 1}, "prompt": [0]}, ConfigError, "block_end"),
    ({"config": CFG, "token_ids": {**TOK, "extra": 9}, "prompt": [0]}, ConfigError, "extra"),
    ({"config": [CFG], "token_ids": TOK, "prompt": [0]}, ConfigError, "config"),
    ({"config": {}, "token_ids": TOK, "prompt": [0]}, ConfigError, "mask_delimiters"),
    ([1, 2, 3], ConfigError, "expected an object"),
    ("just a string", ConfigError, "expected an object"),
]


@pytest.mark.parametrize("case,cls,culprit", SCHEDULE, ids=[str(i) for i in range(len(SCHEDULE))])
def test_schedule_rejects_case(cli, workdir, case, cls, culprit):
    run_case(cli, workdir, ["schedule"], cls, culprit, input=json.dumps(case))


def test_schedule_batch_not_a_list(cli, workdir):
    run_case(cli, workdir, ["schedule", "--batch"], ConfigError, "--batch", input=json.dumps({"config": CFG}))


def test_schedule_batch_names_the_case(cli, workdir):
    good = {"config": CFG, "token_ids": TOK, "prompt": [0], "generated": [1, 7, 2]}
    bad = {**good, "generated": [1, [7], 2]}
    run_case(cli, workdir, ["schedule", "--batch"], InputFileError, "case 1", input=json.dumps([good, bad]))


def test_schedule_invalid_json(cli, workdir):
    run_case(cli, workdir, ["schedule"], ConfigError, "<stdin>", "invalid JSON", input="{oops")


def test_schedule_input_file_not_utf8(cli, workdir):
    (workdir / "s.json").write_bytes(b"{\n\xfe}")
    run_case(cli, workdir, ["schedule", "-i", workdir / "s.json"], InputFileError, "s.json", "offset 2")


def test_schedule_input_file_missing(cli, workdir):
    run_case(cli, workdir, ["schedule", "-i", workdir / "none.json"], InputFileError, "none.json")
