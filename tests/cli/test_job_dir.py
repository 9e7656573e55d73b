"""Sweep job folders named by their overrides: readable, legal everywhere, short and unique."""

from __future__ import annotations

from omegaconf import OmegaConf

from seg.cli.job_dir import MAX_NAME, RESOLVER, job_dir_name, register


def test_a_name_is_the_job_number_then_its_overrides() -> None:
    assert job_dir_name(3, "loss=bce,model=segnet") == "3_loss=bce,model=segnet"
    assert job_dir_name(0, "") == "0"  # nothing varies: the number alone
    assert job_dir_name(1, "+trainer.ema_decay=0.99") == "1_+trainer.ema_decay=0.99"


def test_characters_a_file_system_refuses_are_replaced() -> None:
    name = job_dir_name(2, 'dataset.root=/data/a b:c*?"<>|\\d,seed=1')
    assert name == "2_dataset.root=_data_a_b_c_d,seed=1"
    assert not set(name) & set('/\\:*?"<>| ')


def test_long_overrides_are_cut_with_a_hash_that_keeps_names_apart() -> None:
    a = job_dir_name(0, "optimizer.lr=0.001," + "x" * 200 + "=1")
    b = job_dir_name(0, "optimizer.lr=0.001," + "x" * 200 + "=2")
    assert a != b and len(a) <= len("0_") + MAX_NAME and len(b) <= len("0_") + MAX_NAME
    assert a.startswith("0_optimizer.lr=0.001,xxx") and a[-9] == "-" and int(a[-8:], 16) >= 0


def test_the_resolver_names_the_folder_in_a_config() -> None:
    register()
    register()  # a second registration (seg-train run twice in one process) is harmless
    cfg = OmegaConf.create({"num": 4, "dirname": "model=unet", "subdir": f"${{{RESOLVER}:${{num}},${{dirname}}}}"})
    assert cfg.subdir == "4_model=unet"
