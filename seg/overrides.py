"""Values written back as Hydra overrides, for seg's own messages and for Hydra itself: a folder name
that holds `=` or `,` (a sweep job's, e.g. `3_loss=bce,model=segnet`) must be quoted for Hydra's
grammar, then for the shell, or the printed command does not run."""

from __future__ import annotations

import re
import shlex

_PLAIN = re.compile(r"[\w./@:+-]+")  # what Hydra reads as the same unquoted string


def quoted(value: str) -> str:
    """A string value for Hydra's override grammar: always quoted (bare `null`, `10` or `1_000` would be
    read as other types). Inside quotes a backslash is an escape only before a quote (or the closing one)."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"


def shell_arg(key: str, value: str) -> str:
    """`key=value` as one shell word that Hydra reads back as that string."""
    text = value if _PLAIN.fullmatch(value) else quoted(value)
    return shlex.quote(f"{key}={text}")


# The keys whose values are paths, per command: a path given plainly on the command line is quoted for
# Hydra here, so `seg-eval ckpt=S/3_loss=bce,model=segnet/checkpoints/best.pt` works as typed.
PATH_KEYS = {
    "seg-train": ("resume", "run_dir", "dataset.root", "hydra.run.dir", "hydra.sweep.dir"),
    "seg-eval": ("ckpt", "out_dir", "dataset.root"),
    "seg-predict": ("ckpt", "input", "out_dir"),
    "seg-export": ("ckpt", "out", "dataset.root"),
}


def quote_paths(argv: list[str], keys: tuple[str, ...]) -> list[str]:
    """`key=value` for a path key, with a value Hydra would not read as that string (`=`, spaces, ...),
    becomes `key='value'`. Lists (`ckpt=[a.pt,b.pt]`), quoted values, `${...}` and commas without `=`
    (`--multirun ckpt=a.pt,b.pt` sweeps the two; a job folder's name has both) are left to Hydra."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        probe = value if "=" in value else value.replace(",", "")
        if sep and key.lstrip("+") in keys and value and value[0] not in "[('\"" and "${" not in value \
                and not _PLAIN.fullmatch(probe):
            arg = f"{key}={quoted(value)}"
        out.append(arg)
    return out

