"""Nothing of the user's is ever lost (issue 20): every file a user put in a run or an output folder is hashed
before and after each command.

* ``--overwrite`` of a run replaces what the run wrote and nothing else: the user's files and folders are
  carried into the new run and listed in the command's output.
* ``figures -o DIR`` refuses to replace a file memento-lens did not write unless ``--overwrite`` says so.
* ``--resume --overwrite`` together is refused naming both; ``--resume`` with a different config names the
  field with values a reader can tell apart.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from memento_lens.runtime.errors import OptionError, OutputError, RunDirError
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.store import RunStore, first_difference, user_entries
from typer.testing import CliRunner

from memento_lens.cli import app


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def said(res) -> str:
    """The command's output with line wrapping undone (rich wraps long lines to the terminal width)."""
    return " ".join(res.output.split())


def hashes(root: Path, rels) -> dict[str, str]:
    """sha256 of every file under each of ``rels`` (a file or a folder) inside ``root``."""
    out = {}
    for rel in rels:
        p = root / rel
        for f in [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()):
            out[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def add_user_files(run: Path) -> dict[str, str]:
    (run / "mynotes.txt").write_text("what I saw in trace 3")
    (run / "myplots").mkdir()
    (run / "myplots" / "occupancy.png").write_bytes(b"\x89PNG my own plot")
    (run / "myplots" / "deep").mkdir()
    (run / "myplots" / "deep" / "data.csv").write_text("a,b\n1,2\n")
    return hashes(run, ["mynotes.txt", "myplots"])


def toy_run(path: Path, config: dict, n: int = 3) -> Path:
    st = RunStore.create(path, "replay", config)
    st.write_table("notes.parquet", pd.DataFrame({"x": list(range(n))}))
    st.write_tensors("kv/shard-00000.safetensors", {"k0": torch.ones(1, 1, 2, 2)})
    st.mark_complete()
    return path


# -- --overwrite carries the user's files ------------------------------------------------------------------
def test_generate_overwrite_keeps_and_lists_the_users_files(tmp_path):
    """The issue's case: `generate --n 4 --out myrun --overwrite` over a run holding mynotes.txt and myplots/."""
    run = tmp_path / "myrun"
    base = ["generate", "--model", "toy", "--max-new-tokens", 6, "--no-capture", "--threads", 1, "--out", run]
    first = cli(*base, "--n", 2)
    assert first.exit_code == 0, first.output
    before = add_user_files(run)
    res = cli(*base, "--n", 4, "--overwrite")
    assert res.exit_code == 0, res.output
    assert hashes(run, ["mynotes.txt", "myplots"]) == before  # every file kept, byte for byte
    kept = said(res).split("you added", 1)
    assert len(kept) == 2 and "mynotes.txt" in kept[1] and "myplots/" in kept[1]
    new = RunStore.open(run, require_complete=True)  # the new run, every checksum intact
    assert len(new.manifest.config["prompts"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myrun"]  # no replaced run or staging left beside


def test_ablate_overwrite_keeps_the_users_notes(tmp_path):
    """The issue's case: `ablate restart ... --out myabl --overwrite` with the user's my_notes.md."""
    out = tmp_path / "myabl"
    args = ["ablate", "restart", "--no-generated", "--out", out]
    assert cli(*args, "--samples", 8).exit_code == 0
    (out / "my_notes.md").write_text("# restart ablation, first look\n")
    before = hashes(out, ["my_notes.md"])
    res = cli(*args, "--samples", 9, "--overwrite")
    assert res.exit_code == 0, res.output
    assert hashes(out, ["my_notes.md"]) == before
    assert "my_notes.md" in said(res).split("you added", 1)[1]
    assert RunStore.open(out, require_complete=True).manifest.config["samples"] == 9


def test_overwrite_carries_files_in_our_folders_and_renames_only_on_a_clash(tmp_path):
    run = toy_run(tmp_path / "run", {"v": 1})
    (run / "kv" / "which-layers.txt").write_text("layers 3 and 5 look odd")  # inside one of our folders
    (run / "notes.parquet.md").write_text("mine")
    (run / "summary.json").write_text('{"mine": true}')  # a name the new run will write itself
    (run / "empty-folder").mkdir()
    before = hashes(run, ["kv/which-layers.txt", "notes.parquet.md", "summary.json"])
    new = RunStore.create(run, "replay", {"v": 2}, overwrite=True)
    assert new.carried == ["empty-folder/", "kv/which-layers.txt", "notes.parquet.md", "summary.json"]
    assert any("will keep 4" in n for n in new.notes())  # said before the run is written, too
    new.write_json("summary.json", {"ours": 1})
    new.mark_complete()
    assert new.carried_as == {"summary.json": "summary.kept-1.json"}
    after = hashes(run, ["kv/which-layers.txt", "notes.parquet.md", "summary.kept-1.json"])
    assert list(after.values()) == list(before.values())
    assert (run / "empty-folder").is_dir()
    assert json.loads((run / "summary.json").read_text()) == {"ours": 1}
    assert any("summary.json (as summary.kept-1.json)" in n for n in new.notes())
    assert not (run / "kv" / "shard-00000.safetensors").exists()  # the old run's own files are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_that_fails_leaves_the_users_files_where_they_were(tmp_path):
    run = toy_run(tmp_path / "run", {"v": 1})
    before = add_user_files(run)
    with pytest.raises(RuntimeError, match="boom"):
        with RunStore.create(run, "replay", {"v": 2}, overwrite=True) as new:
            new.write_json("summary.json", {"x": 1})
            raise RuntimeError("boom")
    assert hashes(run, ["mynotes.txt", "myplots"]) == before
    assert RunStore.open(run, require_complete=True).manifest.config == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_carry_that_fails_keeps_the_replaced_folder_and_says_so(tmp_path, monkeypatch):
    import os

    run = toy_run(tmp_path / "run", {"v": 1})
    before = add_user_files(run)
    new = RunStore.create(run, "replay", {"v": 2}, overwrite=True)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append(src)
        if len(calls) == 4:  # the swap's two renames went through; the second carried entry fails
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    new.mark_complete()
    monkeypatch.setattr(os, "rename", real)
    left = new.left_in
    assert left is not None and left.exists()
    kept = {**hashes(run, ["mynotes.txt", "myplots"]), **hashes(left, ["mynotes.txt", "myplots"])}
    assert sorted(kept.values()) == sorted(before.values())  # each file in one of the two places, unchanged
    assert any(str(left) in n and "still holds files you added" in n for n in new.notes())


def test_user_entries_tell_ours_from_theirs(tmp_path):
    run = toy_run(tmp_path / "run", {"v": 1})
    (run / "parts" / "00007").mkdir(parents=True)  # an empty folder of our layout: ours
    (run / ".notes.parquet.0badf00d.ml-tmp").write_bytes(b"half")  # our temporary
    (run / "attention").mkdir()
    (run / "attention" / "shard-00003.safetensors").write_bytes(b"cut off")  # ours, never recorded
    (run / "link").symlink_to(tmp_path)  # the user's link: an entry of its own, never followed
    recorded = set(RunStore.open(run).manifest.files)
    assert user_entries(run, recorded) == ["link"]


# -- figures -o DIR -----------------------------------------------------------------------------------------
def _trace_run(tmp_path: Path) -> Path:
    run = tmp_path / "R"
    res = cli("generate", "--model", "toy", "--n", 1, "--max-new-tokens", 40, "--threads", 1, "--out", run)
    assert res.exit_code == 0, res.output
    return run


def test_figures_never_replace_a_file_they_did_not_write(tmp_path):
    """`figures kv-sawtooth --run R -o mine/myfigs` with the user's own kv-sawtooth.csv there."""
    run = _trace_run(tmp_path)
    figs = tmp_path / "mine" / "myfigs"
    figs.mkdir(parents=True)
    (figs / "kv-sawtooth.csv").write_text("my,own\n1,2\n")
    before = hashes(figs, ["."])
    res = cli("figures", "kv-sawtooth", "--run", run, "-o", figs, "--no-png")
    assert res.exit_code == 2, res.output
    assert "kv-sawtooth.csv" in said(res) and "--overwrite" in said(res) and "Traceback" not in res.output
    assert hashes(figs, ["."]) == before  # nothing written at all, the user's file unchanged

    res = cli("figures", "kv-sawtooth", "--run", run, "-o", figs, "--no-png", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (figs / "kv-sawtooth.csv").read_text() != "my,own\n1,2\n"
    again = cli("figures", "kv-sawtooth", "--run", run, "-o", figs, "--no-png")  # its own files: replaced freely
    assert again.exit_code == 0, again.output
    (figs / "kv-sawtooth.md").write_text("my edits to the table")  # the user edits a figure file we wrote
    edited = cli("figures", "kv-sawtooth", "--run", run, "-o", figs, "--no-png")
    assert edited.exit_code == 2 and "kv-sawtooth.md" in said(edited)
    assert (figs / "kv-sawtooth.md").read_text() == "my edits to the table"


def test_figures_into_a_runs_own_folder_refuse_the_users_file_there(tmp_path):
    from memento_lens.analyses.figures import render_figures

    run = _trace_run(tmp_path)
    render_figures(["kv-sawtooth"], runs=[run], out_dir=run / "figures", png=False)
    render_figures(["kv-sawtooth"], runs=[run], out_dir=run / "figures", png=False)  # recorded: replaced
    (run / "figures" / "compression-cdf.md").write_text("my notes on the CDF")
    with pytest.raises(OutputError) as exc:
        render_figures(["compression-cdf"], runs=[run], out_dir=run / "figures", png=False)
    assert "compression-cdf.md" in str(exc.value)
    assert (run / "figures" / "compression-cdf.md").read_text() == "my notes on the CDF"
    assert not (run / "figures" / "compression-cdf.csv").exists()  # refused before anything was written


# -- --resume ----------------------------------------------------------------------------------------------
def test_resume_and_overwrite_together_are_refused_naming_both(tmp_path):
    run = toy_run(tmp_path / "run", {"v": 1})
    before = hashes(run, ["."])
    with pytest.raises(OptionError) as exc:
        RunStore.create(run, "replay", {"v": 2}, overwrite=True, resume=True)
    assert "--resume" in str(exc.value) and "--overwrite" in str(exc.value)
    assert hashes(run, ["."]) == before
    res = cli("generate", "--model", "toy", "--n", 1, "--out", run, "--resume", "--overwrite")
    assert res.exit_code == 2 and "--resume" in said(res) and "--overwrite" in said(res)
    assert hashes(run, ["."]) == before


def test_resume_with_a_different_n_names_the_lengths(tmp_path):
    run = tmp_path / "run"
    base = ["generate", "--model", "toy", "--max-new-tokens", 8, "--threads", 1, "--out", run]
    assert cli(*base, "--n", 2).exit_code == 0
    before = hashes(run, ["."])
    res = cli(*base, "--n", 3, "--resume")
    assert res.exit_code == 2, res.output
    assert "prompts" in said(res) and "2 items" in said(res) and "3 items" in said(res)
    assert hashes(run, ["."]) == before
    with pytest.raises(RunDirError):
        RunStore.create(run, "generate", {}, resume=True)


def test_first_difference_tells_long_values_apart():
    long = list(range(40))
    msg = first_difference({"prompts": [long]}, {"prompts": [long[:-1] + [99]]})
    assert msg == "prompts[0][39] (existing run: 39; this command: 99)"
    msg = first_difference({"p": "x" * 100 + "a"}, {"p": "x" * 100 + "b"})
    assert "character 101" in msg and 'a"' in msg and 'b"' in msg
    msg = first_difference({"p": [[1, 2]] * 4}, {"p": [[1, 2]] * 8})
    assert "4 items" in msg and "8 items" in msg and "[4]" in msg


def test_figures_record_is_a_declared_artifact():
    assert schema.FIGURES_RECORD.startswith(".") and "png" in schema.FIGURE_FORMATS


def test_mementify_overwrite_refuses_a_checkpoint_folder_holding_the_users_files(tmp_path):
    """`mementify --overwrite` replaced the whole folder (rmtree): a user's notes beside the checkpoint were lost."""
    from memento_lens.runtime.mementify import mementify

    out = tmp_path / "ckpt"
    mementify("random:llama-tiny", out)
    (out / "my_eval.md").write_text("perplexity notes")
    (out / "plots").mkdir()
    (out / "plots" / "loss.png").write_bytes(b"png")
    before = hashes(out, ["."])
    with pytest.raises(OutputError) as exc:
        mementify("random:llama-tiny", out, overwrite=True)
    assert "my_eval.md" in str(exc.value) and "plots/" in str(exc.value) and str(out) in str(exc.value)
    assert hashes(out, ["."]) == before
    (out / "my_eval.md").unlink()
    shutil.rmtree(out / "plots")
    mementify("random:llama-tiny", out, overwrite=True)  # only its own files: replaced as before
    assert (out / "mementify.json").exists()


def test_a_new_run_that_fails_keeps_a_file_the_user_put_there_meanwhile(tmp_path):
    out = tmp_path / "new-run"
    with pytest.raises(RuntimeError, match="boom"):
        with RunStore.create(out, "replay", {"v": 1}):
            (out / "notes.txt").write_text("written while the command ran")
            raise RuntimeError("boom")
    assert (out / "notes.txt").read_text() == "written while the command ran"
    assert not (out / "manifest.json").exists()
    with pytest.raises(RuntimeError):
        with RunStore.create(tmp_path / "empty-run", "replay", {"v": 1}):
            raise RuntimeError("boom")
    assert not (tmp_path / "empty-run").exists()  # nothing of anyone's: no trace left
