"""TensorBoard's HPARAMS tab and the config text: written into the run's own event file, read back
with TensorBoard's own event reader."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from seg.logger.hparams import run_hparams
from seg.train.fit import fit
from tests.tiny import compose_cfg


def test_the_run_shows_its_settings_and_best_metrics(tmp_path: Path) -> None:
    fit(compose_cfg(["trainer.epochs=1", "model.wf=2"], tmp_path), tmp_path)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0}).Reload()
    assert "hparams/best_val_dice" in events.Tags()["scalars"]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = start.session_start_info.hparams
    assert params["model._target_"].string_value == "seg.models.UNet"
    assert params["trainer.epochs"].number_value == 1 and params["seed"].number_value == 42
    assert "config" in "".join(events.Tags()["tensors"])  # the resolved config as text


def test_overrides_become_their_own_columns() -> None:
    config = {"model": {"_target_": "seg.models.UNet"}, "optimizer": {"lr": 0.001}, "seed": 3}
    params = run_hparams(config, ["model=unet", "optimizer.lr=0.001", "+trainer.x=1", "resume=auto",
                                  "hydra.sweep.dir=S"])
    assert params["override/model"] == "unet" and params["override/optimizer.lr"] == "0.001"
    assert params["override/trainer.x"] == "1" and "override/resume" not in params
    assert params["seed"] == 3 and params["dataset._target_"] == "None"
