"""Paths with `=` and `,` (sweep job folders) on the command line, and in the commands seg prints."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from seg.overrides import PATH_KEYS, quote_paths, shell_arg


def _value(arg: str) -> object:
    (override,) = OverridesParser.create().parse_overrides([arg])
    return override.value()


def test_a_job_folder_path_reads_back_as_typed() -> None:
    job = "multirun/S/3_loss=bce,model=segnet/checkpoints/best.pt"
    (arg,) = quote_paths([f"ckpt={job}"], PATH_KEYS["seg-eval"])
    assert _value(arg) == job
    (spaced,) = quote_paths(["++dataset.root=/data/my pets"], PATH_KEYS["seg-eval"])
    assert _value(spaced) == "/data/my pets"


def test_lists_quotes_interpolations_and_other_keys_are_left_as_given() -> None:
    given = ["ckpt=[a.pt,b.pt]", "ckpt='x=y.pt'", "out_dir=${hydra:runtime.cwd}/x", "loss=dice,bce", "ckpt=plain.pt",
             "ckpt=a.pt,b.pt"]  # a --multirun sweep over two checkpoints
    assert quote_paths(given, PATH_KEYS["seg-eval"]) == given


def test_a_printed_argument_is_one_shell_word_hydra_reads_back() -> None:
    import shlex

    for path in ("runs/a/last.pt", "S/1_seed=2/checkpoints/last.pt", "it's"):
        (word,) = shlex.split(shell_arg("resume", path))
        assert _value(word) == path
