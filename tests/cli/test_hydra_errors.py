"""Hydra's own command-line errors (bad value, unknown key or option, bad syntax) are one line and exit 2,
like every other user error; --help, --cfg and --multirun still work and a bug keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from seg.cli.common import config_dir, describe_hydra_error, hydra_errors
from tests.cli.forked import MODULES as FORKED
from tests.cli.forked import run_forked

BIN = Path(sys.executable).parent
MODULES = {"seg-eval": "seg.cli.evaluate", "seg-predict": "seg.cli.predict", "seg-prepare": "seg.data.luna.prepare"}


def run(cmd: str, *args: str, cwd: Path, env_extra: dict | None = None, fresh: bool = False
        ) -> subprocess.CompletedProcess:
    """fresh: the installed command in a new interpreter; else forked from a warm one (tests/cli/forked.py)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env_extra or {})
    if not fresh and cmd in FORKED:
        return run_forked(cmd, list(args), cwd, env)
    exe = BIN / cmd
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", MODULES[cmd]]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    """Exit 2, a single `<prog>: error: ...` line on stderr, no traceback, no Hydra hint."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout and "HYDRA_FULL_ERROR" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- the installed commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["overlays=some"], ["overrid", "overlays=some", "Invalid value 'some', expected one of [worst, all, none]"]),
        (["num_workers=1.5"], ["num_workers=1.5", "could not be converted to Integer"]),
        (["splt=val"], ["Could not override 'splt'", "(did you mean split?)"]),
        (["split=["], ["cannot parse override 'split=['"]),
        (["device=null"], ["device=null", "is not Optional"]),
    ],
)
def test_seg_eval_override_errors_are_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    line = one_line_error(run("seg-eval", "ckpt=x.pt", *args, cwd=tmp_path), "seg-eval", *fragments)
    assert line.endswith("(see `seg-eval --help`)")
    assert "full_key" not in line and "object_type" not in line and "reference_type" not in line


def test_seg_predict_override_errors_are_one_line(tmp_path: Path) -> None:
    one_line_error(run("seg-predict", "ckpt=x", "input=y", "tta=maybe", cwd=tmp_path), "seg-predict",
                   "tta=maybe", "not a valid bool", "(see `seg-predict --help`)")
    one_line_error(run("seg-predict", "ckpt=x", "input=y", "treshold=0.3", cwd=tmp_path), "seg-predict",
                   "(did you mean threshold?)")
    one_line_error(run("seg-predict", "ckpt=x", "input=y", "submission=rle", cwd=tmp_path), "seg-predict",
                   "expected one of [relative, absolute]")


def test_multirun_and_cfg_job_still_work(tmp_path: Path) -> None:
    printed = run("seg-eval", "ckpt=x.pt", "split=val", "--cfg", "job", cwd=tmp_path)
    assert printed.returncode == 0 and "ckpt: x.pt" in printed.stdout and "split: val" in printed.stdout
    one_line_error(run("seg-eval", "--multirun", "ckpt=a.pt,b.pt", "overlays=some", cwd=tmp_path), "seg-eval",
                   "overlays=some")
    swept = run("seg-eval", "--multirun", "ckpt=a.pt,b.pt", cwd=tmp_path)  # the sweep runs its first job
    assert "#0 : ckpt=a.pt" in swept.stdout + swept.stderr
    one_line_error(swept, "seg-eval", "checkpoint not found: a.pt")


def test_hydra_full_error_set_by_the_user_keeps_hydra_traceback(tmp_path: Path) -> None:
    proc = run("seg-eval", "ckpt=x.pt", "overlays=some", cwd=tmp_path, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr


@pytest.mark.parametrize("cmd", ["seg-eval", "seg-predict"])
def test_help_lists_the_keys_not_the_training_groups(tmp_path: Path, cmd: str) -> None:
    helped = run(cmd, "--help", cwd=tmp_path, fresh=True)  # seg-eval's and seg-predict's own process
    assert helped.returncode == 0, helped.stderr
    out = helped.stdout
    assert out.startswith(f"{cmd}: ") and "== Config ==" in out and "ckpt: ???" in out and "device: auto" in out
    assert "Configuration groups" not in out and "Compose your configuration" not in out
    for group in ("optimizer:", "loss:", "augmentation:", "experiment:", "model:", "scheduler:"):
        assert group not in out, group
    keys = ("split: test", "overlays: worst") if cmd == "seg-eval" else ("input: ???", "threshold: 0.5")
    assert all(key in out for key in keys)


def test_seg_prepare_user_errors_exit_2(tmp_path: Path) -> None:
    one_line_error(run("seg-prepare", "--root", str(tmp_path / "nonexistent"), cwd=tmp_path), "seg-prepare",
                   "does not exist or is not a folder")
    (tmp_path / "empty").mkdir()
    one_line_error(run("seg-prepare", "--root", str(tmp_path / "empty"), cwd=tmp_path), "seg-prepare",
                   "no CT series found under")


# --- the helper, in-process -------------------------------------------------------------------------


def _compose_error(overrides: list[str]) -> BaseException:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        with pytest.raises(Exception) as info:
            compose(config_name="train", overrides=overrides)
    return info.value


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.epoch=3", "Could not override 'trainer.epoch': Key 'epoch' not in 'TrainerConfig' "
                            "(did you mean trainer.epochs?)"),
        ("trainer.epochs=abc", "Error merging override trainer.epochs=abc: "
                               "Value 'abc' of type 'str' could not be converted to Integer"),
        ("trainer.batch_size=1.5", "Error merging override trainer.batch_size=1.5: "
                                   "Value '1.5' of type 'float' could not be converted to Integer"),
        ("trainer.monitor_mode=maximum", "Error merging override trainer.monitor_mode=maximum: "
                                         "Invalid value 'maximum', expected one of [max, min]"),
        ("seed=null", "Error merging override seed=null: field 'seed' is not Optional"),
        ("model=unett", "In 'train': Could not find 'model/unett'; Available options in 'model': "
                        "mobilenet_unet, segnet, unet, unet_wrapper (did you mean model=unet?)"),
        ("model.depthh=3", "Could not override 'model.depthh': Key 'depthh' is not in struct "
                           "(did you mean model.depth?)"),
        ("model.zzzz=3", "Could not override 'model.zzzz': Key 'zzzz' is not in struct; "
                         "To append to your config use +model.zzzz=3"),
    ],
)
def test_describe_hydra_error(override: str, expected: str) -> None:
    assert describe_hydra_error(_compose_error([override])) == expected


def test_describe_parse_error_names_the_override() -> None:
    text = describe_hydra_error(_compose_error(["trainer.epochs=["]))
    assert text.startswith("cannot parse override 'trainer.epochs=[': no viable alternative at input '['")
    assert "\n" not in text


@pytest.fixture
def app(tmp_path: Path):
    """A minimal @hydra.main app run in-process, as the entry points run theirs."""
    (tmp_path / "app.yaml").write_text(
        "defaults:\n  - override hydra/job_logging: none\n  - override hydra/hydra_logging: none\n  - _self_\n"
        "epochs: 1\nfail: false\nhydra:\n  output_subdir: null\n  run:\n    dir: .\n"
    )
    calls: list[int] = []

    @hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="app")
    def task(cfg: DictConfig) -> None:
        if cfg.fail:
            raise RuntimeError("a genuine bug")
        calls.append(cfg.epochs)

    GlobalHydra.instance().clear()
    yield task, calls
    GlobalHydra.instance().clear()


def test_hydra_errors_in_process(app, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    task, calls = app
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["app", "epoch=2"])
    with pytest.raises(SystemExit) as exited, hydra_errors("app"):
        task()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == "app: error: Could not override 'epoch': Key 'epoch' is not in struct (did you mean epochs?) " \
                  "(see `app --help`)\n"
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored for whatever runs next in this process

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["app", "epochs=3"])
    with hydra_errors("app"):
        task()
    assert calls == [3]

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["app", "fail=true"])
    with pytest.raises(RuntimeError, match="a genuine bug"), hydra_errors("app"):  # a bug is not a user error
        task()


def test_hydra_errors_leaves_other_exceptions_and_a_user_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.errors import ConfigCompositionException

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(KeyError), hydra_errors("app"):
        assert os.environ["HYDRA_FULL_ERROR"] == "0"  # setdefault: a user's own value wins
        raise KeyError("bug")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException), hydra_errors("app"):
        raise ConfigCompositionException("asked for the full trace")
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
