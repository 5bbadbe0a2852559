"""Bad options: numeric ranges, layers/heads against the model, devices, ports, output paths."""

from __future__ import annotations

import errno
import os

import pytest
from memento_lens.runtime.errors import ConfigError, InputFileError, ModelError, OptionError, OutputError

from .badinput_harness import GOOD_IDS, cases, run_case, write_jsonl

TINY = ["--model", "random:tiny", "--threads", "1"]
GEN = ["generate", *TINY, "-p", "w6 w7", "--keep-delimiters", "--max-new-tokens", "4"]


def _replay(workdir):
    traces = write_jsonl(workdir / "t.jsonl", [{"trace": "a", "token_ids": GOOD_IDS, "prompt_len": 1}])
    return ["replay", *TINY, "--traces", traces, "--keep-delimiters"]


GENERATE_CASES = [
    (["--batch-size", "0"], OptionError, "--batch-size"),
    (["--batch-size", "-1"], OptionError, "--batch-size"),
    (["--max-new-tokens", "0"], OptionError, "--max-new-tokens"),
    (["--max-new-tokens", "-5"], OptionError, "--max-new-tokens"),
    (["--temperature", "-1"], OptionError, "--temperature"),
    (["--temperature", "nan"], OptionError, "--temperature"),
    (["--top-p", "0"], ConfigError, "--top-p"),
    (["--top-p", "1.5"], ConfigError, "--top-p"),
    (["--top-k", "-1"], OptionError, "--top-k"),
    (["--min-p", "1"], ConfigError, "--min-p"),
    (["--min-p", "-0.1"], ConfigError, "--min-p"),
    (["--n", "0"], OptionError, "--n"),
    (["--n", "-3"], OptionError, "--n"),
    (["--threads", "-1"], OptionError, "--threads"),
    (["--device", "bogus"], OptionError, "--device", "bogus"),
    (["--device", "cuda"], OptionError, "--device", "cuda"),
    (["--device", "cuda:7"], OptionError, "--device"),
    (["--device", "xla"], OptionError, "--device"),
    (["--dtype", "float8"], ConfigError, "--dtype", "float8"),
    (["--mode", "bogus"], ConfigError, "mode", "bogus"),
    (["--keep", "-2"], ConfigError, "keep_last_n_blocks"),
    (["--max-block-tokens", "-1"], ConfigError, "max_block_tokens"),
    (["--layers", "99"], OptionError, "--layers", "99"),
    (["--layers", "2"], OptionError, "--layers", "2 layers"),
    (["--layers", "-1"], OptionError, "--layers"),
    (["--layers", "a,b"], OptionError, "--layers", "'a'"),
    (["--attention-layers", "5"], OptionError, "--attention-layers"),
    (["--attention-queries", "-1"], OptionError, "--attention-queries"),
    (["--attention-queries", "x"], OptionError, "--attention-queries"),
    (["--model", "random:nope"], ModelError, "random:nope"),
]


@pytest.mark.parametrize("extra,cls,culprits", cases(GENERATE_CASES))
def test_generate_rejects(cli, workdir, extra, cls, culprits):
    run_case(cli, workdir, [*GEN, *extra], cls, *culprits)
    assert not (workdir / "runs").exists()


REPLAY_CASES = [
    (["--batch-size", "0"], OptionError, "--batch-size"),
    (["--batch-size", "-1"], OptionError, "--batch-size"),
    (["--layers", "99"], OptionError, "--layers", "99"),
    (["--layers", "0,x"], OptionError, "--layers"),
    (["--attention-layers", "99"], OptionError, "--attention-layers"),
    (["--device", "bogus"], OptionError, "--device"),
    (["--device", "cuda"], OptionError, "--device"),
    (["--dtype", "int8"], ConfigError, "--dtype"),
    (["--mode", "evict"], ConfigError, "mode"),
    (["--keep", "-7"], ConfigError, "keep_last_n_blocks"),
    (["--threads", "-2"], OptionError, "--threads"),
    (["--toy", "3"], OptionError, "--traces", "--toy"),  # both given
]


@pytest.mark.parametrize("extra,cls,culprits", cases(REPLAY_CASES))
def test_replay_rejects(cli, workdir, extra, cls, culprits):
    run_case(cli, workdir, [*_replay(workdir), *extra], cls, *culprits)


def test_replay_needs_traces_or_toy(cli, workdir):
    run_case(cli, workdir, ["replay", *TINY, "--keep-delimiters"], OptionError, "--traces", "--toy")


def test_replay_toy_count_negative(cli, workdir):
    run_case(cli, workdir, ["replay", *TINY, "--keep-delimiters", "--toy", "-2"], OptionError, "--toy")


def test_model_without_masking_record_needs_the_switch(cli, workdir):
    run_case(cli, workdir, ["generate", *TINY, "-p", "w6"], ConfigError, "--keep-delimiters", "random:tiny")


VERIFY_CASES = [
    (["--blocks", "0"], OptionError, "--blocks"),
    (["--dtype", "float8"], ConfigError, "--dtype"),
    (["--device", "bogus"], OptionError, "--device"),
    (["--threads", "-1"], OptionError, "--threads"),
]


@pytest.mark.parametrize("extra,cls,culprits", cases(VERIFY_CASES))
def test_verify_rejects(cli, workdir, extra, cls, culprits):
    run_case(cli, workdir, ["verify", "--threads", "1", *extra], cls, *culprits)


def test_verify_out_existing_file_kept(cli, workdir):
    (workdir / "report.json").write_text("mine")
    run_case(cli, workdir, ["verify", "--out", workdir / "report.json"], OutputError, "report.json", "--overwrite")


def test_verify_out_is_a_directory(cli, workdir):
    (workdir / "d").mkdir()
    run_case(cli, workdir, ["verify", "--out", workdir / "d"], OutputError, "is a directory")


@pytest.mark.parametrize("cmd", ["generate", "replay"])
def test_out_naming_an_existing_file(cli, workdir, cmd):
    (workdir / "out").write_text("user data")
    args = GEN if cmd == "generate" else _replay(workdir)
    run_case(cli, workdir, [*args, "--out", workdir / "out"], OutputError, "--out", "existing file")


@pytest.mark.parametrize("cmd", ["generate", "replay"])
def test_out_under_a_file(cli, workdir, cmd):
    (workdir / "f").write_text("user data")
    args = GEN if cmd == "generate" else _replay(workdir)
    run_case(cli, workdir, [*args, "--out", workdir / "f" / "run"], OutputError, "--out", "is a file")


@pytest.mark.parametrize("cmd", ["generate", "replay"])
def test_out_holding_user_files_is_refused_and_kept(cli, workdir, cmd):
    from memento_lens.runtime.errors import RunDirError

    (workdir / "mine").mkdir()
    (workdir / "mine" / "thesis.tex").write_text("precious")
    args = GEN if cmd == "generate" else _replay(workdir)
    run_case(cli, workdir, [*args, "--out", workdir / "mine"], RunDirError, "mine", "not a memento-lens run")


@pytest.mark.parametrize("cmd", ["generate", "replay"])
def test_read_only_output_directory(cli, workdir, cmd, monkeypatch):
    # root ignores permission bits, so the refusal is simulated at the one place the check asks
    ro = workdir / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if str(p) == str(ro) else real(p, m, *a, **k))
    args = GEN if cmd == "generate" else _replay(workdir)
    run_case(cli, workdir, [*args, "--out", ro / "run"], OutputError, "not writable", str(ro))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_refused_write_mid_run_is_one_line_and_leaves_no_partial_file(cli, workdir, monkeypatch, err):
    from memento_lens.runtime.rundir import store

    def refuse(path, data):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(store, "atomic_write_bytes", refuse)
    out = cli([*GEN, "--out", workdir / "run"])
    assert out.exit_code == 2 and out.exception is None, out.stderr
    assert isinstance(out.error, OutputError) and os.strerror(err) in out.stderr
    assert not list(workdir.rglob("*.tmp"))


INGEST_CASES = [
    (["--keep", "-5"], OptionError, "--keep"),
    (["--format", "csv"], ConfigError, "--format", "csv"),
    (["--tokenizer", "approx:x"], ConfigError, "--tokenizer", "approx:x"),
    (["--model", "no-such-preset"], ConfigError, "no-such-preset"),
]


@pytest.mark.parametrize("extra,cls,culprits", cases(INGEST_CASES))
def test_ingest_rejects(cli, workdir, extra, cls, culprits):
    import json

    (workdir / "t.json").write_text(
        json.dumps(
            {
                "problem": "q",
                "segments": [
                    {"type": "block", "block_idx": 1, "text": "a"},
                    {"type": "summary", "block_idx": 1, "text": "b"},
                ],
            }
        )
    )
    run_case(cli, workdir, ["ingest", workdir / "t.json", "--out", workdir / "o", *extra], cls, *culprits)


def test_ingest_out_existing_file(cli, workdir):
    import json

    (workdir / "t.json").write_text(json.dumps({"segments": []}))
    (workdir / "o").write_text("mine")
    run_case(cli, workdir, ["ingest", workdir / "t.json", "--out", workdir / "o"], OutputError, "--out")


def test_stats_blocks_csv_existing_file_kept(cli, workdir):
    import json

    (workdir / "t.json").write_text(
        json.dumps(
            {
                "problem": "q",
                "segments": [
                    {"type": "block", "block_idx": 1, "text": "a"},
                    {"type": "summary", "block_idx": 1, "text": "b"},
                ],
            }
        )
    )
    (workdir / "b.csv").write_text("mine")
    run_case(
        cli, workdir, ["stats", workdir / "t.json", "--blocks-csv", workdir / "b.csv"], OutputError, "--blocks-csv"
    )


def test_kv_mixing_runs_and_files(cli, workdir, good_run):
    (workdir / "t.jsonl").write_text("")
    run_case(cli, workdir, ["kv", good_run, workdir / "t.jsonl"], OptionError, "not both")


@pytest.mark.parametrize("port", ["99999", "0", "-1", "65536"])
def test_app_port_out_of_range(workdir, port):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["app", "--port", port])
    assert res.exit_code == 2 and "--port" in res.stderr and res.stderr.count("\n") == 1


ABLATE_CASES = [
    (["ablate", "restart", "--samples", "0"], OptionError, "--samples"),
    (["ablate", "restart", "--samples", "1"], OptionError, "--samples"),
    (["ablate", "patch", "--samples", "0"], OptionError, "--samples"),
    (["ablate", "patch", "--samples", "-4"], OptionError, "--samples"),
    (["ablate", "restart", "--samples", "8", "--device", "bogus"], OptionError, "--device"),
    (["ablate", "patch", "--samples", "8", "--layers", "99"], OptionError, "--layers"),
    (["ablate", "patch", "--samples", "8", "--heads", "9"], OptionError, "--heads"),
]


@pytest.mark.parametrize("args,cls,culprits", cases(ABLATE_CASES))
def test_ablate_rejects_before_writing(cli, workdir, args, cls, culprits):
    run_case(cli, workdir, [*args, "--threads", "1", "--out", workdir / "ab"], cls, *culprits)


def test_generate_prompt_the_tokenizer_cannot_read(cli, workdir):
    args = ["generate", "--model", "toy", "-p", "What is the derivative of x squared?", "--threads", "1"]
    run_case(cli, workdir, args, InputFileError, "--prompt 0", "<unk>", "'toy'", "--allow-unk")


MORE = [
    (["toy", "train", "--steps", "1", "--batch-size", "0"], OptionError, "--batch-size"),
    (["toy", "train", "--steps", "1", "--lr", "-1"], OptionError, "--lr"),
    (["toy", "train", "--steps", "1", "--stage1-fraction", "2"], OptionError, "--stage1-fraction"),
    (["toy", "train", "--steps", "1", "--device", "bogus"], OptionError, "--device"),
    (["toy", "eval", "-n", "4", "--device", "bogus"], OptionError, "--device"),
    (["demo", "--no-app", "--traces", "0"], OptionError, "--traces"),
    (["demo", "--no-app", "--traces", "2", "--port", "99999"], OptionError, "--port"),
    (["replay", "--toy", "2", "--attention-layers", "0", "--attention-queries", "999"], OptionError, "999"),
]


@pytest.mark.parametrize("extra,cls,culprits", cases(MORE))
def test_more_commands_reject(cli, workdir, extra, cls, culprits):
    run_case(
        cli,
        workdir,
        [*extra, "--out", workdir / "o"] if extra[0] != "toy" or extra[1] == "train" else extra,
        cls,
        *culprits,
    )


@pytest.mark.parametrize("cmd", ["figures", "demo"])
def test_out_existing_file_for_figures_and_demo(cli, workdir, good_run, cmd):
    (workdir / "o").write_text("mine")
    args = ["figures", "--run", good_run, "--no-png"] if cmd == "figures" else ["demo", "--no-app", "--traces", "2"]
    run_case(cli, workdir, [*args, "--out", workdir / "o"], OutputError, "--out", "existing file")


TOY = [
    (["toy", "train", "--steps", "0"], OptionError, "--steps"),
    (["toy", "train", "--steps", "1", "--checkpoints", "a,b"], OptionError, "--checkpoints"),
    (["toy", "train", "--variant", "no-such-recipe"], OptionError, "--variant"),
    (["toy", "eval", "-n", "0"], OptionError, "-n"),
    (["toy", "eval", "-n", "1", "--foreign"], OptionError, "--foreign"),
]


@pytest.mark.parametrize("extra,cls,culprits", cases(TOY))
def test_toy_commands_reject_on_one_line(cli, workdir, extra, cls, culprits):
    run_case(cli, workdir, [*extra, "--out", workdir / "o"] if extra[1] == "train" else extra, cls, *culprits)
