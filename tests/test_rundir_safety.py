"""Run directories are safe by construction (issue 11): each case here lost or exposed data before.

Cases: --overwrite only replaces an empty directory or a memento-lens run and never the current directory,
its parents or /; the new run is staged beside the old one and swapped in only when complete; --resume
never deletes a file it did not write; manifest and index paths stay inside the run; the same command on
its own complete run says so; a different config names the first differing field; advice names only
options the command has; files get the umask's mode; disk full / read-only -> one line naming the path.
Failures are injected (tests run as root, so chmod alone cannot make a directory unwritable).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from memento_lens.runtime.errors import OutputError, RunDirError
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir import store as store_mod
from memento_lens.runtime.rundir.kv import KVKey
from memento_lens.runtime.rundir.reader import RunReader
from memento_lens.runtime.rundir.store import RunStore, UnsafePath

OLD = {"seed": 1, "masking": {"keep_last_n_blocks": 0, "mode": "memento"}}
NEW = {"seed": 1, "masking": {"keep_last_n_blocks": 1, "mode": "memento"}}


def old_run(path: Path) -> Path:
    """A complete run with one table and one tensor file, config OLD."""
    st = RunStore.create(path, "replay", OLD)
    st.write_table("notes.parquet", pd.DataFrame({"x": [1, 2, 3]}))
    st.write_tensors("kv/shard-00000.safetensors", {"k0": torch.ones(1, 1, 2, 2)})
    st.mark_complete(n_traces=3)
    return path


def assert_old_run_intact(path: Path) -> None:
    st = RunStore.open(path, require_complete=True)  # every checksum verified
    assert st.manifest.config == OLD
    assert st.read_table("notes.parquet")["x"].tolist() == [1, 2, 3]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# -- --overwrite --------------------------------------------------------------------------------------------
def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(RunDirError) as exc:
        RunStore.create(mine, "replay", NEW, overwrite=True)
    assert str(mine) in str(exc.value) and "not a memento-lens run" in str(exc.value)
    assert "--overwrite" not in str(exc.value)  # the refusal must not recommend the flag that would delete it
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_damaged_manifest(tmp_path):
    run = old_run(tmp_path / "run")
    (run / "manifest.json").write_text("{broken")
    (run / "mine.txt").write_text("keep")
    with pytest.raises(RunDirError, match="manifest.json"):
        RunStore.create(run, "replay", NEW, overwrite=True)
    assert (run / "mine.txt").read_text() == "keep"


def test_overwrite_never_targets_cwd_its_parents_or_root(tmp_path, monkeypatch):
    run = old_run(tmp_path / "parent" / "run")
    (run / "sub").mkdir()
    monkeypatch.chdir(run / "sub")
    for target in (".", "..", str(run), str(tmp_path / "parent"), "/"):
        with monkeypatch.context() as m:
            m.setattr(shutil, "rmtree", lambda *a, **k: pytest.fail(f"rmtree {a[0]}"))
            with pytest.raises(RunDirError) as exc:
                RunStore.create(target, "replay", NEW, overwrite=True)
        assert target in str(exc.value) or str(Path(target).resolve()) in str(exc.value)
    assert_old_run_intact(run)


def test_overwrite_of_cwd_refused_through_the_cli(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.md").write_text("mine")
    monkeypatch.chdir(work)
    examples = [str(p) for p in sorted(_shared_data().glob("*.json"))[:1]]
    res = CliRunner().invoke(app, ["ingest", *examples, "--out", ".", "--overwrite"])
    assert res.exit_code == 2, res.output
    assert "current directory" in res.output and "Traceback" not in res.output
    assert (work / "notes.md").read_text() == "mine"


def _shared_data() -> Path:
    data = Path("/work/shared/data")
    if not data.exists():  # a checkout next to shared/ (CI)
        data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not any(data.glob("*.json")):
        pytest.skip("shared example traces not present")
    return data


def test_overwrite_writes_beside_and_swaps_in_only_when_complete(tmp_path):
    run = old_run(tmp_path / "run")
    new = RunStore.create(run, "replay", NEW, overwrite=True)
    new.write_table("notes.parquet", pd.DataFrame({"x": [9]}))
    # until complete, the target is still the old run, and the new one lives beside it (same parent)
    assert_old_run_intact(run)
    assert new.path.parent == run.parent and new.path.name.startswith(".run.overwrite-")
    new.mark_complete()
    assert new.path == run
    st = RunStore.open(run, require_complete=True)
    assert st.manifest.config == NEW and st.read_table("notes.parquet")["x"].tolist() == [9]
    assert siblings(run) == ["run"]  # the old run was deleted after the swap, no staging left


def test_overwrite_that_fails_midway_leaves_the_old_run(tmp_path, monkeypatch):
    run = old_run(tmp_path / "run")
    real = pd.DataFrame.to_parquet

    def disk_full(self, path, *a, **k):
        if "second" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full)
    with pytest.raises(OutputError) as exc:
        with RunStore.create(run, "replay", NEW, overwrite=True) as new:
            new.write_table("first.parquet", pd.DataFrame({"x": [1]}))
            new.write_table("second.parquet", pd.DataFrame({"x": [2]}))
            new.mark_complete()
    msg = str(exc.value)
    assert "second.parquet" in msg and "no space left" in msg and "\n" not in msg
    assert_old_run_intact(run)
    assert siblings(run) == ["run"]  # no half-written run left beside it either


def test_overwrite_failing_at_the_swap_leaves_the_old_run(tmp_path, monkeypatch):
    run = old_run(tmp_path / "run")
    new = RunStore.create(run, "replay", NEW, overwrite=True)
    new.write_table("notes.parquet", pd.DataFrame({"x": [9]}))
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # target moved aside; moving the new run in fails
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OutputError, match=str(run)):
        with new:
            new.mark_complete()
    monkeypatch.setattr(os, "rename", real)
    assert_old_run_intact(run)
    assert siblings(run) == ["run"]


def test_overwrite_of_empty_directory_and_same_command_rerun(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    st = RunStore.create(empty, "replay", OLD, overwrite=True)
    assert st.path == empty
    st.mark_complete()
    assert RunStore.open(empty, require_complete=True).manifest.config == OLD


# -- --resume -----------------------------------------------------------------------------------------------
def test_resume_keeps_and_lists_files_it_did_not_write(tmp_path):
    st = RunStore.create(tmp_path / "run", "replay", OLD)
    st.write_table("a.parquet", pd.DataFrame({"x": [1]}))
    (st.path / "my_notes.txt").write_text("mine")
    (st.path / "analysis").mkdir()
    (st.path / "analysis" / "plot.csv").write_text("1,2")
    (st.path / ".a.parquet.0badf00d.ml-tmp").write_bytes(b"half")  # our own temp file, killed mid-write
    resumed = RunStore.create(tmp_path / "run", "replay", OLD, resume=True)
    assert (st.path / "my_notes.txt").read_text() == "mine"
    assert (st.path / "analysis" / "plot.csv").read_text() == "1,2"
    assert resumed.unrecorded == ["analysis/plot.csv", "my_notes.txt"]
    assert any("my_notes.txt" in line for line in resumed.notes())
    assert not (st.path / ".a.parquet.0badf00d.ml-tmp").exists()
    assert resumed.has("a.parquet")


def test_incomplete_run_advice_names_only_options_the_command_has(tmp_path):
    RunStore.create(tmp_path / "run", "probe_passcode", OLD)  # interrupted: never completed
    with pytest.raises(RunDirError) as exc:
        RunStore.create(tmp_path / "run", "probe_passcode", OLD, can_resume=False)
    assert "--overwrite" in str(exc.value) and "--resume" not in str(exc.value)
    RunStore.create(tmp_path / "replay", "replay", OLD)
    with pytest.raises(RunDirError, match="--resume"):
        RunStore.create(tmp_path / "replay", "replay", OLD)


# -- paths from the manifest and indexes --------------------------------------------------------------------
def _record_raw(run: Path, rel: str, data: bytes) -> None:
    """Record ``rel`` in the manifest as if a writer had (checksum of ``data``)."""
    m = json.loads((run / "manifest.json").read_text())
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (run / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("rel", ["../secret.txt", "kv/../../secret.txt", "ABSOLUTE"])
def test_manifest_paths_outside_the_run_are_refused(tmp_path, rel):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside the run")
    run = old_run(tmp_path / "run")
    rel = str(secret) if rel == "ABSOLUTE" else rel
    _record_raw(run, rel, secret.read_bytes())
    with pytest.raises(UnsafePath) as exc:
        RunStore.open(run)
    assert "manifest.json" in str(exc.value) and rel in str(exc.value)


def test_symlinks_inside_a_run_are_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    run = old_run(tmp_path / "run")
    shard = run / "kv" / "shard-00000.safetensors"
    secret.write_bytes(shard.read_bytes())  # same bytes, so only the link itself can give it away
    shard.unlink()
    shard.symlink_to(secret)
    with pytest.raises(UnsafePath) as exc:
        RunStore.open(run)
    assert "shard-00000.safetensors" in str(exc.value) and "symbolic link" in str(exc.value)
    (run / "kv").rename(run / "kv-real")
    (run / "kv").symlink_to(run / "kv-real")  # a linked directory on the way is refused too
    with pytest.raises(UnsafePath, match="symbolic link"):
        RunStore.open(run, verify=False).read_tensors("kv/shard-00000.safetensors")


def test_kv_index_shard_outside_the_run_is_refused(tmp_path):
    run = tmp_path / "run"
    st = RunStore.create(run, "replay", OLD)
    st.write_tensors("kv/shard-00000.safetensors", {"k0": torch.ones(1, 1, 2, 2), "v0": torch.ones(1, 1, 2, 2)})
    outside = tmp_path / "other.safetensors"
    shutil.copy(run / "kv" / "shard-00000.safetensors", outside)
    row = dict(trace="t", variant="normal", layer=0, block=0, start=0, end=2, key="k0", value="v0")
    st.write_table(schema.KV_INDEX, pd.DataFrame([{**row, "shard": "../other.safetensors"}]))
    st.mark_complete()
    with pytest.raises(UnsafePath) as exc:
        RunReader(run).kv(KVKey("t", 0, "normal", 0))
    assert "kv/index.parquet" in str(exc.value) and "../other.safetensors" in str(exc.value)


def test_manifest_symlink_is_refused(tmp_path):
    run = old_run(tmp_path / "run")
    real = tmp_path / "elsewhere.json"
    (run / "manifest.json").rename(real)
    (run / "manifest.json").symlink_to(real)
    with pytest.raises(UnsafePath, match="manifest.json"):
        RunStore.open(run)


# -- the same command again, a different one ----------------------------------------------------------------
def test_same_command_on_its_complete_run_reuses_it(tmp_path):
    run = old_run(tmp_path / "run")
    before = (run / "manifest.json").read_bytes()
    again = RunStore.create(run, "replay", OLD)
    assert again.reused and again.complete
    assert any("already holds the complete run" in line for line in again.notes())
    assert (run / "manifest.json").read_bytes() == before


def test_different_config_is_refused_naming_the_first_differing_field(tmp_path):
    run = old_run(tmp_path / "run")
    with pytest.raises(RunDirError) as exc:
        RunStore.create(run, "replay", NEW)
    msg = str(exc.value)
    assert "masking.keep_last_n_blocks" in msg and "existing run: 0" in msg and "this command: 1" in msg
    with pytest.raises(RunDirError, match="kind"):
        RunStore.create(run, "generate", OLD)
    assert_old_run_intact(run)


def test_replace_predicate_replaces_the_callers_own_runs_by_the_overwrite_rules(tmp_path, monkeypatch):
    """``replace`` (the demo replacing an earlier demo): this same complete run is reused; a different or
    unfinished run it accepts is staged beside it and swapped in only when complete; one it does not accept
    is refused as without it; a directory that is not a run, or the current directory, is never replaced."""
    run = old_run(tmp_path / "run")
    ours = lambda m: m.kind == "replay"  # noqa: E731
    assert RunStore.create(run, "replay", OLD, replace=ours).reused
    with pytest.raises(RunDirError, match="first difference"):
        RunStore.create(run, "replay", NEW, replace=lambda m: False)
    new = RunStore.create(run, "replay", NEW, replace=ours)
    assert new.path != run and new.path.parent == run.absolute().parent
    new.write_table("notes.parquet", pd.DataFrame({"x": [9]}))
    assert_old_run_intact(run)  # until it is complete
    new.mark_complete()
    assert RunStore.open(run, require_complete=True).manifest.config == NEW
    assert siblings(run) == ["run"]

    unfinished = RunStore.create(tmp_path / "u", "replay", OLD)
    unfinished.write_table("notes.parquet", pd.DataFrame({"x": [1]}))
    assert RunStore.create(tmp_path / "u", "replay", OLD, replace=ours).path != tmp_path / "u"  # staged

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a memento-lens run"):
        RunStore.create(mine, "replay", OLD, replace=lambda m: True)
    old_run(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(RunDirError, match="current directory"):
        RunStore.create(Path("."), "replay", NEW, replace=lambda m: True)
    assert_old_run_intact(tmp_path / "cwd")


def test_ablate_on_its_own_complete_run_prints_the_results_and_exits_0(tmp_path, monkeypatch):
    """`ablate restart` twice: the second finds its run, says so, prints the same table, recomputes nothing."""
    from memento_lens.probes import ablation
    from typer.testing import CliRunner

    from memento_lens.cli import app

    args = ["ablate", "restart", "--samples", "24", "--no-generated", "--out", str(tmp_path / "r"), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    monkeypatch.setattr(ablation, "restart_experiment", lambda *a, **k: pytest.fail("recomputed"))
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "already holds the complete run" in second.output
    rows = lambda out: json.loads(out.strip().splitlines()[-1])  # noqa: E731
    assert rows(second.stdout) == rows(first.stdout)
    different = CliRunner().invoke(app, [*args[:3], "25", *args[4:]])
    assert different.exit_code == 2 and "samples" in different.output and "--resume" not in different.output


# -- modes, full disks, read-only targets, older versions ---------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        st = RunStore.create(tmp_path / "run", "replay", OLD)
        st.write_table("a.parquet", pd.DataFrame({"x": [1]}))
        st.write_json("b.json", {"y": 2})
        st.write_tensors("kv/shard-00000.safetensors", {"k": torch.ones(2)})
    finally:
        os.umask(old)
    for rel in ("a.parquet", "b.json", "kv/shard-00000.safetensors", "manifest.json"):
        assert (st.path / rel).stat().st_mode & 0o777 == mode, rel


def test_disk_full_names_the_path_and_loses_nothing_complete(tmp_path, monkeypatch):
    st = RunStore.create(tmp_path / "run", "replay", OLD)
    st.write_table("a.parquet", pd.DataFrame({"x": [1]}))
    before = (st.path / "a.parquet").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(OutputError) as exc:
        st.write_table("a.parquet", pd.DataFrame({"x": [2]}))  # replacing a complete file
    assert str(st.path / "a.parquet") in str(exc.value) and "no space left" in str(exc.value)
    assert (st.path / "a.parquet").read_bytes() == before
    assert RunStore.open(st.path).read_table("a.parquet")["x"].tolist() == [1]
    assert sorted(p.name for p in st.path.iterdir()) == ["a.parquet", "manifest.json"]  # no temp left


def test_read_only_target_is_one_line_from_the_cli(tmp_path, monkeypatch):
    """A read-only file system (EROFS) is injected: as root, chmod would not stop the write."""
    from typer.testing import CliRunner

    from memento_lens.cli import app

    real_open = os.open
    target = tmp_path / "ro"

    def read_only(path, flags, *a, **k):
        if str(path).startswith(str(target)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    examples = [str(p) for p in sorted(_shared_data().glob("*.json"))[:1]]
    res = CliRunner().invoke(app, ["ingest", *examples, "--out", str(target)])
    assert res.exit_code == 2, res.output
    err = [ln for ln in res.output.splitlines() if "read-only" in ln]
    assert len(err) == 1 and str(target) in err[0] and "Traceback" not in res.output


def test_older_schema_version_is_refused_naming_both_versions(tmp_path):
    run = old_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    m["schema_version"] = 0
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunDirError) as exc:
        RunReader(run)
    msg = str(exc.value)
    assert "manifest.json" in msg and "schema version 0" in msg and f"({schema.SCHEMA_VERSION})" in msg


def test_an_older_version_migrates_when_a_migration_exists(tmp_path, monkeypatch):
    run = old_run(tmp_path / "run")
    m = json.loads((run / "manifest.json").read_text())
    m["schema_version"] = 0
    m["kind"] = "old-name"
    (run / "manifest.json").write_text(json.dumps(m))
    monkeypatch.setitem(store_mod.MIGRATIONS, 0, lambda d, path: {**d, "kind": "replay"})
    assert RunStore.open(run).manifest.kind == "replay"


def test_run_tables_are_written_and_read_through_the_schema(tmp_path):
    st = RunStore.create(tmp_path / "run", "replay", OLD)
    with pytest.raises(ValueError, match="tokens.*token_id"):
        st.write_table("tokens.parquet", pd.DataFrame({"trace": ["a"], "pos": [0]}))
    pd.DataFrame({"trace": ["a"], "pos": [0]}).to_parquet(tmp_path / "x.parquet")
    data = (tmp_path / "x.parquet").read_bytes()
    (st.path / "tokens.parquet").write_bytes(data)
    _record_raw(st.path, "tokens.parquet", data)
    with pytest.raises(RunDirError, match="tokens.parquet: missing column"):
        RunReader(st.path).table(schema.TOKENS)


def test_overwrite_through_a_symlinked_target_never_deletes_what_it_pointed_to(tmp_path):
    real = old_run(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    new = RunStore.create(link, "replay", NEW, overwrite=True)
    new.mark_complete()
    assert RunStore.open(link, require_complete=True).manifest.config == NEW
    assert not link.is_symlink()  # the link was replaced by the new run
    assert_old_run_intact(real)  # and the directory it pointed to was left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
