"""Checkpoint ensembles for seg-eval and seg-predict: which checkpoints `ckpt` names (a list, or every
`checkpoints/best.pt` below a folder, filtered by `members=GLOB`), the checks that they can be averaged,
and their averaged probabilities.

Members run one after the other on the same batch and their probabilities are summed as they come, so
a batch holds one member's probabilities and the running sum, never every member's at once.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import ListConfig

from seg.checkpoint import load_checkpoint, sha256
from seg.engine.loop import StepSettings
from seg.errors import ConfigError
from seg.inference.core import Inference, resolve_inference
from seg.inference.outputs import OutputFolder
from seg.inference.postprocess import postprocess_path
from seg.provenance import split_sha256

log = logging.getLogger("seg")

T = TypeVar("T")
# What members must share to be averaged: the same output channels meaning the same classes, the same
# inputs, and the same image size and inference settings (one batch, one window, serves them all).
FIELDS = ("n_classes", "class_names", "in_channels", "image_size", "crop_size", "inference")


def ensemble_paths(ckpt: Any, members: str | None) -> list[Path] | None:
    """The checkpoints `ckpt` names when it may name several: a list, or a folder (every
    checkpoints/best.pt below it whose run folder matches `members`, sorted by path). None for one
    checkpoint file, which the single-model commands take as before."""
    if ckpt is None:
        raise ConfigError("ckpt=null: give a checkpoint (ckpt=PATH), several (ckpt=[a.pt,b.pt]) or a folder of runs")
    if isinstance(ckpt, (list, tuple, ListConfig)):
        _only_for_folders(members, "a list")
        paths = [Path(str(p)).expanduser() for p in ckpt]
        if not paths:
            raise ConfigError("ckpt=[] names no checkpoint; give ckpt=PATH, ckpt=[a.pt,b.pt] or ckpt=FOLDER")
        _refuse_twins(paths)
        return paths
    path = Path(str(ckpt)).expanduser()
    if path.is_dir():
        return select(path, members)
    _only_for_folders(members, "a checkpoint file")
    return None


def _refuse_twins(paths: Sequence[Path]) -> None:
    """A member averaged twice would silently weigh double: one file under two names (a hard link, a
    copy of a run folder made with `cp -al`) is refused; byte-identical copies are caught by their
    sha256 when the members load."""
    seen: dict[Any, Path] = {}
    for path in paths:
        twin = seen.setdefault(_identity(path), path)
        if twin is not path:
            same = f"lists {path} twice" if twin == path else f"names one file twice ({twin} and {path}: a " \
                "run's best.pt is a hard link to its last.pt when the last epoch was the best)"
            raise ConfigError(f"ckpt {same}; each checkpoint is one member of the ensemble")


def _identity(path: Path) -> Any:
    """The file behind a path (device and inode: hard links are one file), or the path if it has none."""
    try:
        info = path.stat()
    except OSError:
        return path.absolute()
    return info.st_dev, info.st_ino


def _only_for_folders(members: str | None, given: str) -> None:
    if members is not None:
        raise ConfigError(f"members={members!r} filters the runs below ckpt=FOLDER, but ckpt is {given}; "
                          "drop members= or give the sweep's folder as ckpt")


def run_folder(ckpt: Path) -> Path:
    """The run a checkpoint belongs to: the folder holding its checkpoints/, else its own folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _best_checkpoints(folder: Path) -> list[Path]:
    """Every checkpoints/best.pt below `folder`, following linked run folders (a sweep assembled from
    links to runs elsewhere), each real folder once: a link loop ends where it started."""
    found, visited = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        here = Path(root)
        try:
            info = here.stat()
        except OSError:
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((info.st_dev, info.st_ino))
        if here.name == "checkpoints" and "best.pt" in files and (here / "best.pt").is_file():
            found.append(here / "best.pt")
    return found


def select(folder: Path, members: str | None) -> list[Path]:
    """Every `checkpoints/best.pt` below `folder` whose run folder's path below `folder` matches the
    glob `members` (fnmatch: `*` matches any text, `/` too), sorted by path; one line if none does."""
    found = sorted(_best_checkpoints(folder))
    if not found:
        raise ConfigError(f"ckpt={folder}: no checkpoints/best.pt below it; give a folder of seg-train runs (a "
                          "sweep's folder) or the checkpoint files as ckpt=[a.pt,b.pt]")
    if members is None:
        _refuse_twins(found)
        return found
    names = {p: run_folder(p).relative_to(folder).as_posix() for p in found}
    chosen = [p for p in found if fnmatch.fnmatchcase(names[p], members)]
    _refuse_twins(chosen)
    if not chosen:
        shown = ", ".join(list(names.values())[:5]) + (" ..." if len(names) > 5 else "")
        raise ConfigError(f"ckpt={folder} members={members!r}: none of the {len(found)} run folder(s) with a "
                          f"checkpoints/best.pt matches ({shown}); `*` matches any text, e.g. members='*seed=1*'")
    return chosen


def label(path: Path, paths: Sequence[Path]) -> str:
    """A member's short name in tables: its run folder's name for a run's best.pt, else its path;
    relative to the members' common folder."""
    shown = run_folder(path) if path.name == "best.pt" and path.parent.name == "checkpoints" else path
    try:
        common = os.path.commonpath([str(run_folder(p).absolute()) for p in paths])
        relative = shown.absolute().relative_to(common).as_posix()
    except ValueError:  # no common folder (another drive)
        return str(shown)
    return shown.absolute().name if relative == "." else relative


def signature(stored: Mapping[str, Any], how: Inference) -> dict[str, Any]:
    """The FIELDS of a member, read from its stored training config (plain data, as weights_only loads
    it; compared as found: what else is wrong with it, building the member says)."""
    model = stored.get("model") if isinstance(stored.get("model"), Mapping) else {}
    dataset = stored.get("dataset") if isinstance(stored.get("dataset"), Mapping) else {}
    size = dataset.get("image_size")
    names = dataset.get("class_names")
    names = [str(n) for n in names] if isinstance(names, (list, tuple)) else names
    return {"n_classes": model.get("n_classes"), "class_names": names,
            "in_channels": model.get("in_channels"),
            "image_size": list(size) if isinstance(size, (list, tuple)) else None if size is None else [size, size],
            "crop_size": dataset.get("crop_size"), "inference": how}


def load_members(paths: Sequence[Path], inference: Any, build: Callable[[dict[str, Any], Path, str], T], *,
                 tta: bool = False) -> list[T]:
    """`build(checkpoint, path, sha256)` for each member in turn (it checks the stored config), refusing the
    first member whose FIELDS differ from the first's. Only the built members stay in memory."""
    members: list[T] = []
    first: dict[str, Any] = {}
    digests: dict[str, int] = {}
    for k, path in enumerate(paths, 1):
        if path.suffix.lower() == ".onnx":
            raise ConfigError(f"ensemble member {k} ({path}) is an .onnx file; an ensemble averages seg-train "
                              "checkpoints run in PyTorch: give its .pt checkpoint")
        digest = sha256(path)  # read once: `build` gets it too
        twin = digests.setdefault(digest, k)
        if twin != k:  # a copied run folder: the same weights would count twice
            raise ConfigError(f"ensemble member {k} ({path}) is a byte-identical copy of member {twin} "
                              f"({paths[twin - 1]}); each checkpoint is one member: leave the copy out")
        ckpt = load_checkpoint(path)
        # Compared before the model is built (a model of other classes would not take the first one's
        # place); a stored config that is no mapping is left to `build`, which says what is wrong with it.
        stored = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else {}
        mine = signature(stored, resolve_inference(inference, stored, tta=tta))
        first = first or mine
        for key in FIELDS:
            if mine[key] != first[key]:
                show = {"inference": lambda v: v.describe()}.get(key, lambda v: v)
                raise ConfigError(f"ensemble member {k} ({path}) differs from member 1 ({paths[0]}) in {key}: "
                                  f"{show(mine[key])} vs {show(first[key])}; an ensemble's members must share "
                                  "classes, input channels, image size and inference settings")
        members.append(build(ckpt, path, digest))
        del ckpt
    return members


def note_postprocess(paths: Sequence[Path], command: str) -> None:
    """Post-processing is tuned per checkpoint: an ensemble's averaged probabilities are never
    post-processed, which the user with tuned members is told once."""
    tuned = [p for p in paths if postprocess_path(p).is_file()]
    if tuned:
        log.warning("%s: the ensemble's masks are not post-processed (%s was tuned for %s alone)", command,
                    postprocess_path(tuned[0]).name, tuned[0])


def write_members(outputs: OutputFolder, paths: Sequence[Path]) -> None:
    """ensemble.json in seg-predict's folder: which checkpoints made its masks."""
    target = outputs.folder / "ensemble.json"
    members = [{"checkpoint": str(p.resolve()), "checkpoint_sha256": sha256(p)} for p in paths]
    target.write_text(json.dumps({"members": members, "combined": "mean of the members' probabilities"}, indent=1))
    outputs.wrote(target)


def split_difference(path: Path, provenance: Mapping[str, Any], split: str,
                     split_ids: Mapping[str, Sequence[str]]) -> str | None:
    """Why a member's `split` cases may not be the ones evaluated (a member of another fold or seed
    trained on other cases), or None. Its run's split.json says which cases; without one, only the
    stored split hash can say that the split as a whole differs."""
    now = [str(c) for c in split_ids.get(split, [])]
    record = run_folder(path) / "split.json"
    try:
        stored = json.loads(record.read_text()) if path.parent.name == "checkpoints" and record.is_file() else None
    except (OSError, ValueError):
        stored = None
    if isinstance(stored, dict) and isinstance(stored.get(split), list):
        then = {str(c) for c in stored[split]}
        seen = {str(c) for key, ids in stored.items() if key != split and isinstance(ids, list) for c in ids}
        missing = [c for c in now if c not in then]
        if not missing:
            return None
        trained = sum(c in seen for c in missing)
        return (f"its {split} split ({record}) differs from the one evaluated: {len(missing)} of the {len(now)} "
                f"cases are not in it, {trained} of them among its train/val cases")
    then_hash = provenance.get("split_sha256")
    if then_hash and then_hash != split_sha256(split_ids):
        return (f"it was trained on another split (sha256 {str(then_hash)[:12]}, {split_sha256(split_ids)[:12]} now); "
                f"with no split.json beside its checkpoints/ its {split} cases cannot be compared")
    return None


def member_logits(forward: torch.nn.Module, settings: StepSettings, image: torch.Tensor) -> torch.Tensor:
    """One member's logits as seg.engine.loop.evaluate gets a single model's: in its memory layout and
    precision, as float32."""
    image = image.contiguous(memory_format=settings.memory_format)
    with settings.amp.autocast():
        return forward(image).float()


def average(probs: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean of the members' probabilities, summed as each comes (an iterator keeps one at a time;
    the first member's tensor becomes the running sum)."""
    total, n = None, 0
    for p in probs:
        total, n = (p if total is None else total.add_(p)), n + 1
    if total is None:
        raise ConfigError("an ensemble needs at least one member")
    return total.div_(n)
