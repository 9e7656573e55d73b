"""Every option in configs/ composes against the typed schema, and its objects can be built."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from seg.cli.common import config_dir
from seg.engine import builders

CONFIGS = config_dir()
GROUPS = ("dataset", "model", "loss", "augmentation", "optimizer", "scheduler", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_train(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return compose(config_name="train", overrides=overrides)


def test_every_group_has_its_documented_options() -> None:
    expected = {
        "dataset": {"synthetic", "ph2", "luna16", "pets", "siim", "isbi2012", "folder"},
        "model": {"segnet", "unet", "unet_wrapper", "mobilenet_unet"},
        "loss": {"bce", "dice", "dice_bce", "dice_recall", "ce", "dice_ce", "weighted_bce"},
        "augmentation": {"none", "flip", "affine", "strong"},
        "optimizer": {"adam", "adamw", "sgd", "rmsprop"},
        "scheduler": {"none", "plateau", "cosine", "poly"},
        "experiment": {"ph2_segnet", "luna_unet", "pets_unet", "pets_mobilenet", "siim_unet", "isbi_unet"},
    }
    for group, names in expected.items():
        assert names <= set(options(group)), f"{group}: missing {names - set(options(group))}"


def test_default_config_is_typed_and_complete() -> None:
    cfg = compose_train([])
    assert cfg.dataset._target_ == "seg.data.synthetic.SyntheticData"
    assert cfg.trainer.monitor == "val/dice" and cfg.trainer.device == "auto"
    assert OmegaConf.missing_keys(cfg) == set()
    assert cfg.model.in_channels == cfg.dataset.in_channels == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=ten", "trainer.epochs"),
        ("trainer.epoch=3", "epoch"),
        ("trainer.monitor_mode=up", "monitor_mode"),
        ("seeed=1", "seeed"),
        ("model=resnet", "model"),
    ],
)
def test_bad_overrides_fail_at_composition(override: str, message: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_train([override])
    assert message in str(info.value) or message in str(info.value.__cause__)


@pytest.mark.parametrize("name", options("model"))
def test_model_options_build_and_run(name: str) -> None:
    cfg = compose_train([f"model={name}"])
    model = builders.build_model(cfg.model, "default")
    out = model(torch.rand(1, cfg.dataset.in_channels, 64, 64))
    assert out.shape == (1, cfg.dataset.n_classes, 64, 64)


@pytest.mark.parametrize("name", options("loss"))
def test_loss_options_build(name: str) -> None:
    multi = name in ("ce", "dice_ce")
    cfg = compose_train([f"loss={name}"])
    loss = builders.build(cfg.loss, "loss")
    k = 3 if multi else 1
    logits = torch.randn(2, k, 8, 8, requires_grad=True)
    mask = torch.randint(0, k if multi else 2, (2, 8, 8))
    weight = torch.rand(2, 8, 8) + 0.5
    value = loss(logits, mask, weight=weight)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("name", options("augmentation"))
def test_augmentation_options_build(name: str) -> None:
    cfg = compose_train([f"augmentation={name}"])
    augment = builders.build(cfg.augmentation, "augmentation").train()
    image, mask = torch.rand(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    out_image, out_mask, _ = augment(image, mask, None)
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0, 1, 255}


@pytest.mark.parametrize("opt", options("optimizer"))
@pytest.mark.parametrize("sched", options("scheduler"))
def test_optimizer_and_scheduler_options_build(opt: str, sched: str) -> None:
    cfg = compose_train([f"optimizer={opt}", f"scheduler={sched}"])
    model = torch.nn.Conv2d(3, 1, 3)
    optimizer = builders.build_optimizer(cfg.optimizer, model, torch.device("cpu"))
    scheduler = builders.build_scheduler(cfg.scheduler, optimizer, epochs=5, mode="max")
    assert (scheduler is None) == (sched == "none")
    lrs = []
    for _ in range(5):
        optimizer.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(0.5)
        elif scheduler is not None:
            scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(lr >= 0 for lr in lrs)
    if sched in ("cosine", "poly"):
        assert lrs[-1] < max(lrs)


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_options_compose(name: str) -> None:
    cfg = compose_train([f"dataset={name}"])
    assert cfg.dataset._target_.startswith("seg.data.")
    for key in ("in_channels", "n_classes", "class_names"):
        assert key in cfg.dataset
    # Model channels follow the dataset without being set twice.
    assert cfg.model.in_channels == cfg.dataset.in_channels
    assert cfg.model.n_classes == cfg.dataset.n_classes


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_recipes_compose_and_build(name: str) -> None:
    # no download here: the pretrained recipe runs on a stand-in weights file in tests/recipes
    offline = ["model.pretrained=null", "model.freeze_encoder=false"] if name == "pets_mobilenet" else []
    cfg = compose_train([f"experiment={name}", "dataset.root=/data", *offline])
    assert OmegaConf.missing_keys(cfg) == set()
    model = builders.build_model(cfg.model, cfg.trainer.weight_init)
    builders.build(cfg.loss, "loss")
    builders.build(cfg.augmentation, "augmentation")
    builders.build_optimizer(cfg.optimizer, model, torch.device("cpu"))
    builders.build_scheduler(cfg.scheduler, builders.build_optimizer(cfg.optimizer, model, torch.device("cpu")),
                             cfg.trainer.epochs, "max")


def test_ph2_segnet_recipe_matches_the_notebook() -> None:
    cfg = compose_train(["experiment=ph2_segnet", "dataset.root=/data"])
    assert cfg.dataset._target_ == "seg.data.ph2.PH2Data" and cfg.dataset.image_size == 256
    assert cfg.model._target_ == "seg.models.SegNet"
    assert cfg.optimizer.lr == pytest.approx(1e-3) and cfg.optimizer.weight_decay == pytest.approx(1e-6)
    assert cfg.trainer.batch_size == 32 and cfg.trainer.epochs == 30 and cfg.seed == 42



def test_pets_unet_recipe_has_its_measured_defaults() -> None:
    """The settings docs/recipes.md measured (and the YAML header justifies), composed as documented."""
    cfg = compose_train(["experiment=pets_unet", "dataset.root=/data"])
    assert cfg.model._target_ == "seg.models.UNet" and (cfg.model.depth, cfg.model.wf) == (4, 4)
    assert cfg.loss._target_ == "seg.losses.DiceCELoss" and not cfg.scheduler  # constant lr
    assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.trainer.ema_decay) == (8, 20, 0.99)
    assert cfg.optimizer.lr == pytest.approx(1e-3) and cfg.trainer.monitor == "val/iou"
    assert (cfg.dataset.image_size, cfg.dataset.n_classes, cfg.augmentation.hflip_p) == (128, 3, 0.5)

def test_eval_config_composes() -> None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="eval", overrides=["ckpt=x.pt", "+dataset.root=/data", "split=val"])
    assert cfg.ckpt == "x.pt" and cfg.dataset.root == "/data" and cfg.split == "val"


def test_predict_config_composes_with_every_option_typed() -> None:
    from hydra.errors import ConfigCompositionException

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="predict", overrides=["ckpt=x.pt", "input=/data/new", "tta=true",
                                                        "submission=absolute", "threshold=0.3", "batch_size=4"])
        assert cfg.ckpt == "x.pt" and cfg.input == "/data/new" and cfg.tta is True and cfg.recursive is True
        assert cfg.submission.value == "absolute" and cfg.threshold == 0.3 and cfg.batch_size == 4
        assert cfg.out_dir is None and cfg.precision is None and cfg.device == "auto"
        for bad in ("submission=rle", "tta=maybe", "colour=red"):
            with pytest.raises(ConfigCompositionException):
                compose(config_name="predict", overrides=["ckpt=x.pt", "input=y", bad])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer.lr=abc"], "invalid optimizer settings"),
        (["optimizer=sgd", "optimizer.momentum=-1"], "momentum"),
        (["scheduler=plateau", "scheduler.factor=2"], "invalid scheduler settings"),
        (["scheduler=cosine", "scheduler.warmup_epochs=-1"], "warmup_epochs and min_lr must be >= 0"),
        (["scheduler=poly", "scheduler.power=0"], "power must be > 0"),
    ],
)
def test_bad_optimizer_and_scheduler_values_are_config_errors(overrides: list[str], message: str) -> None:
    from seg.errors import ConfigError

    cfg = compose_train(overrides)
    model = torch.nn.Conv2d(3, 1, 3)
    with pytest.raises(ConfigError, match=message):
        optimizer = builders.build_optimizer(cfg.optimizer, model, torch.device("cpu"))
        builders.build_scheduler(cfg.scheduler, optimizer, epochs=3, mode="max")


def test_missing_root_names_the_full_key() -> None:
    from seg.errors import ConfigError

    cfg = compose_train(["dataset=ph2"])
    with pytest.raises(ConfigError, match=r"missing required value\(s\) dataset.root: "):
        builders.build_data(cfg.dataset)


# --- check_train_config: what the schema types but cannot bound ---------------------------------------


@pytest.mark.parametrize("name", ["", *options("experiment")])
def test_shipped_configs_pass_check_train_config(name: str) -> None:
    from seg.config import check_train_config

    check_train_config(compose_train([f"experiment={name}", "dataset.root=/data"] if name else []))


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.epochs=0", "trainer.epochs=0 must be an integer >= 1"),
        ("trainer.val_every=0", "trainer.val_every=0 must be an integer >= 1"),
        ("trainer.val_every=-1", "trainer.val_every=-1 must be an integer >= 1"),
        ("trainer.batch_size=0", "trainer.batch_size=0 must be an integer >= 1"),
        ("trainer.num_workers=-1", "trainer.num_workers=-1 must be an integer >= 0"),
        ("trainer.progress_every=-5", "trainer.progress_every=-5 must be an integer >= 0"),
        ("trainer.preview_images=-1", "trainer.preview_images=-1 must be an integer >= 0"),
        ("trainer.early_stopping=0", "trainer.early_stopping=0 must be an integer >= 1"),
        ("trainer.prefetch_factor=0", "trainer.prefetch_factor=0 must be an integer >= 1"),
        ("+trainer.epoch=3", "unknown key trainer.epoch (did you mean trainer.epochs?)"),
        ("+trainer.zzz=3", "unknown key trainer.zzz (valid keys: epochs, batch_size,"),
        ("+sed=3", "unknown key sed (did you mean seed?)"),
        ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm=-1.0 must be > 0"),
        ("trainer.grad_clip_value=0", "trainer.grad_clip_value=0.0 must be > 0"),
    ],
)
def test_check_train_config_rejects(override: str, message: str) -> None:
    from seg.config import check_train_config
    from seg.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        check_train_config(compose_train([override]))
    text = str(err.value)
    assert text.startswith("invalid training config: ") and message in text and "\n" not in text


def test_check_train_config_accepts_edge_values_and_lists_every_problem() -> None:
    from seg.config import check_train_config
    from seg.errors import ConfigError

    check_train_config(compose_train(["trainer.epochs=1", "trainer.num_workers=0", "trainer.progress_every=0",
                                      "trainer.preview_images=0", "trainer.early_stopping=1"]))
    with pytest.raises(ConfigError) as err:
        check_train_config(compose_train(["trainer.epochs=0", "+trainer.epoch=3"]))
    assert "trainer.epochs=0" in str(err.value) and "unknown key trainer.epoch " in str(err.value)
