"""The Optuna sweeper's search space: Hydra's override grammar in, Optuna distributions and overrides out."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from seg.cli.common import config_dir
from seg.errors import ConfigError
from seg.search.space import literal, parse_space, quoted

PARSER = OverridesParser.create()


def _compose(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_the_ready_search_composes_and_each_of_its_keys_exists() -> None:
    cfg = _compose(["hparams_search=unet_optuna", "seed=7"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.seg_optuna.optuna_sweeper.OptunaSweeper"
    assert (sweeper.seed, sweeper.sampler, sweeper.pruner, sweeper.n_jobs) == (7, "tpe", "median", 1)  # the run's seed
    space = parse_space(sweeper.params, [], PARSER)
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["optimizer.weight_decay"] == FloatDistribution(1e-6, 1e-2, log=True)
    assert d["loss"] == CategoricalDistribution(["dice_bce", "bce", "dice"])
    assert d["augmentation"] == CategoricalDistribution(["flip", "affine", "none"])
    assert d["model.wf"] == IntDistribution(4, 6)  # range(4, 7): Hydra's range leaves the stop out
    assert space.fixed == {} and cfg.model._target_ == "seg.models.UNet"
    # Every key of the space is a real key: one value of each composes into a training config.
    probe = _compose(space.probe())
    assert (probe.loss._target_, probe.model.wf, probe.optimizer.lr) == ("seg.losses.DiceBCELoss", 4, 1e-4)
    assert _compose([]).search.trial is None  # outside a search: no trial


def test_the_command_line_fixes_a_key_or_adds_a_dimension() -> None:
    params = {"loss": "choice(dice, bce)", "optimizer.lr": "tag(log, interval(1e-4, 1e-2))", "trainer.epochs": "30"}
    space = parse_space(params, ["loss=bce", "trainer.batch_size=range(8, 33, 8)", "+extra=x y"], PARSER)
    assert set(space.distributions) == {"optimizer.lr", "trainer.batch_size"}
    assert space.distributions["trainer.batch_size"] == IntDistribution(8, 32, step=8)
    assert list(space.fixed.values()) == ["trainer.epochs=30", "loss=bce", "+extra=x y"]
    overrides = space.overrides({"optimizer.lr": 1.5e-05, "trainer.batch_size": 16})
    assert overrides == ["trainer.epochs=30", "loss=bce", "+extra=x y", "optimizer.lr=1.5e-05", "trainer.batch_size=16"]
    # A resumed trial keeps its own value where the command line now fixes its key.
    assert space.overrides({"loss": "dice"})[:2] == ["trainer.epochs=30", "+extra=x y"]


@pytest.mark.parametrize("value", [1e-05, 0.1, 1 / 3, 3, True, False, None, "bce"])
def test_a_sampled_value_reads_back_the_same(value: object) -> None:
    assert PARSER.parse_override(f"k={literal(value)}").value() == value


def test_each_choice_reads_back_as_it_was_listed() -> None:
    listed = r"choice(bce, 'a,b', '1', 'null', [1, 2], {a: 1}, 3, 1e-3, true)"
    (dist,) = parse_space({"k": listed}, [], PARSER).distributions.values()
    back = [PARSER.parse_override(f"k={literal(c)}").value() for c in dist.choices]
    assert back == list(PARSER.parse_override(f"k={listed}").sweep_iterator())
    assert [type(v) for v in back] == [str, str, str, str, list, dict, int, float, bool]
    assert dist.choices[0] == "bce" and dist.choices[6] == 3  # plain where plain reads back: Optuna shows those


def test_a_quoted_path_reads_back_the_same() -> None:
    path = "sqlite:////tmp/a b/it's=1,2.db"
    assert PARSER.parse_override(f"search.storage={quoted(path)}").value() == path


@pytest.mark.parametrize("value, message", [
    ("range(1.5, 3)", "range() is for ints"),
    ("range(5, 1)", "needs start < stop"),
    ("tag(log, interval(0, 1))", "low"),
    ("tag(grid, interval(1, 2))", "unknown tag 'grid'"),
    ("tag(log, choice(1, 2))", "not a search-space form"),
    ("interval(1,", "cannot read the search space"),
])
def test_a_bad_search_space_is_one_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_space({"optimizer.lr": value}, [], PARSER)
    assert message in str(err.value) and "\n" not in str(err.value)
