"""Stored configs from before a key existed: the ADDED_LATER keys mean what older seg did."""

from __future__ import annotations

import inspect

import yaml

from seg.data.base import CachedArrayData
from seg.engine import schedulers
from seg.models import MobileNetUNet
from seg.stored import ADDED_LATER, config_dir, missing_keys


def test_each_key_added_later_defaults_to_what_seg_did_before_it() -> None:
    # where each key arrived (cosine always had warmup_epochs, with its own default of 1)
    where = {"dataset.folds": [CachedArrayData.__init__], "dataset.fold": [CachedArrayData.__init__],
             "scheduler.warmup_epochs": [schedulers.poly],
             "scheduler.warmup_start_factor": [schedulers.cosine, schedulers.poly],
             "model.unfreeze_after": [MobileNetUNet.__init__]}
    assert where.keys() == ADDED_LATER.keys()
    for dotted, old in ADDED_LATER.items():
        key = dotted.split(".")[1]
        assert all(inspect.signature(f).parameters[key].default == old for f in where[dotted]), dotted


def test_a_stored_config_without_those_keys_is_complete_but_one_without_others_is_not() -> None:
    stored = {name: yaml.safe_load((config_dir() / name / f"{option}.yaml").read_text())
              for name, option in (("dataset", "ph2"), ("scheduler", "poly"), ("model", "mobilenet_unet"))}
    for dotted in ADDED_LATER:
        group, key = dotted.split(".")
        stored[group].pop(key, None)
    assert missing_keys(stored) == []
    del stored["dataset"]["image_size"]
    assert missing_keys(stored) == ["dataset.image_size"]
