"""Bad input: one clear line on stderr, a non-zero exit, nothing written under --root."""

import pytest

from dae.cli import main


def _fails(argv, capsys, code):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("dae: error: ") and "\n" not in err
    return err


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--profile", "nope"], 2, "unknown profile 'nope'"),
        (["--set", "noise.stddev"], 2, "malformed --set 'noise.stddev'"),
        (["--set", "train.epoch=3"], 2, "unknown config key 'train.epoch'"),
        (["--config", "/no/such.yaml"], 2, "cannot read config file"),
        (["--set", "data.dataset=not_a_dataset"], 1, "unknown TFDS dataset 'not_a_dataset'"),
        (["--set", "data.dataset=mnist:9.9.9"], 1, "invalid TFDS dataset 'mnist:9.9.9'"),
        (["--set", "seed=-1"], 2, "invalid config value for 'seed'"),
        (["--set", "beam.runner=Bogus"], 1, "unknown Beam runner 'Bogus'"),
        (["--set", "beam.options=[--num_workerz=2]"], 1, "unknown Beam pipeline option(s)"),
    ],
)
def test_run_refuses_bad_input_before_writing(tmp_path, capsys, extra, code, message):
    root = tmp_path / "root"
    err = _fails(["run", "--root", str(root), *extra], capsys, code)
    assert message in err
    assert not root.exists()


def test_missing_data_source(tmp_path, capsys):
    root = tmp_path / "root"
    sets = [f"data.data_dir={tmp_path / 'tfds'}", f"data.manual_dir={tmp_path / 'manual'}"]
    argv = ["run", "--root", str(root)] + [a for s in sets for a in ("--set", s)]
    err = _fails(argv, capsys, 1)
    assert "is not prepared" in err and "dae data prepare mnist" in err
    assert not root.exists()


def test_stage_needs_an_existing_run(tmp_path, capsys):
    err = _fails(["stage", "train", "--run", "nope", "--root", str(tmp_path)], capsys, 1)
    assert "no run 'nope'" in err


def test_unknown_data_prepare_name(tmp_path, capsys):
    assert main(["data", "prepare", "cifar10", "--data-dir", str(tmp_path)]) == 2
    assert "cifar10" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_stage_name_must_be_a_stage(tmp_path, capsys):
    from dae.pipeline.config import Config, dump_config

    (tmp_path / "runs" / "r1").mkdir(parents=True)
    dump_config(Config(), tmp_path / "runs" / "r1" / "config.yaml")
    err = _fails(["stage", "trian", "--run", "r1", "--root", str(tmp_path)], capsys, 1)
    assert "unknown stage 'trian'" in err
    err = _fails(["stage", "train", "--run", "r1", "--root", str(tmp_path)], capsys, 1)
    assert "stage 'train' needs 'transform', which has not succeeded" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "r1").iterdir()) == ["config.yaml"]


HOLDER = """
import sys, time
from dae.pipeline.locks import root_lock

with root_lock(sys.argv[1], "dae run first"):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_busy_root_names_the_holders_command_pid_and_host(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    root, script = tmp_path / "root", tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"holding\n"
        err = _fails(["runs", "fail", "r1", "--root", str(root)], capsys, 75)
    finally:
        holder.kill()
        holder.wait()
    assert err == (
        f"dae: error: {root} is in use by dae run first (pid {holder.pid} on "
        f"{socket.gethostname()}: holder.py {root}); wait for it to finish or use another --root"
    )
