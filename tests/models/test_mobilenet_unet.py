"""MobileNetUNet: shapes, loading torchvision-format weights, stem adaptation, normalisation, freezing."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from seg.checkpoint import load_checkpoint
from seg.errors import CheckpointError, ConfigError
from seg.models import MobileNetUNet, init_weights
from seg.models.mobilenetv2 import IMAGENET_URL, MobileNetV2Encoder

SMALL = (32, 16, 16, 8)  # decoder widths that keep the tests fast


@pytest.fixture(scope="module")
def donor() -> MobileNetV2Encoder:
    """An encoder with distinctive weights and running stats, standing in for the ImageNet model."""
    torch.manual_seed(1)
    encoder = MobileNetV2Encoder()
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + (0.5 if "running_var" in name else 0.0))
    return encoder


@pytest.fixture(scope="module")
def torchvision_file(donor: MobileNetV2Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layout of torchvision's mobilenet_v2-b0353104.pth: features.* plus classifier.*."""
    state = dict(donor.state_dict())
    state["classifier.1.weight"] = torch.zeros(1000, 1280)
    state["classifier.1.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.pth"
    torch.save(state, path)
    return path


def _assert_encoder_equals(model: MobileNetUNet, donor: MobileNetV2Encoder) -> None:
    got, want = model.encoder.state_dict(), donor.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize(
    ("in_channels", "n_classes", "shape"),
    [(3, 3, (64, 64)), (1, 1, (100, 100)), (7, 1, (37, 53))],
)
def test_output_has_input_size(in_channels: int, n_classes: int, shape: tuple[int, int]) -> None:
    model = MobileNetUNet(in_channels=in_channels, n_classes=n_classes, decoder_channels=SMALL)
    out = model(torch.rand(2, in_channels, *shape))
    assert out.shape == (2, n_classes, *shape)
    assert torch.isfinite(out).all()


def test_tutorial_decoder_widths() -> None:
    model = MobileNetUNet(in_channels=3, n_classes=3)
    assert [up[0].out_channels for up in model.decoder] == [512, 256, 128, 64]
    # each step's input = previous width + the skip it was concatenated with (576, 192, 144, 96)
    assert [up[0].in_channels for up in model.decoder] == [320, 512 + 576, 256 + 192, 128 + 144]
    assert model.head.in_channels == 64 + 96 and model.head.stride == (2, 2)


def test_backward_reaches_every_trainable_parameter() -> None:
    model = MobileNetUNet(in_channels=3, n_classes=2, decoder_channels=SMALL)
    model(torch.rand(2, 3, 64, 64)).logsumexp(1).mean().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    # only the unused 1280-channel conv (kept for the torchvision key set) is frozen
    assert {n.rsplit(".", 2)[0] for n, p in model.named_parameters() if not p.requires_grad} == {"encoder.features.18"}


def test_loads_full_torchvision_state_dict(torchvision_file: Path, donor: MobileNetV2Encoder) -> None:
    model = MobileNetUNet(in_channels=3, n_classes=3, pretrained=str(torchvision_file), decoder_channels=SMALL)
    _assert_encoder_equals(model, donor)
    assert model.pretrained_modules() == [model.encoder]
    assert model.input_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert model.input_std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_loads_features_only_state_dict_without_batch_counters(donor: MobileNetV2Encoder, tmp_path: Path) -> None:
    state = {k: v for k, v in donor.features.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert "0.0.weight" in state
    torch.save(state, tmp_path / "features.pth")
    model = MobileNetUNet(in_channels=3, n_classes=1, pretrained=str(tmp_path / "features.pth"), decoder_channels=SMALL)
    want = donor.state_dict()
    got = model.encoder.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.endswith("num_batches_tracked"))


def test_normalisation_travels_with_the_checkpoint(torchvision_file: Path) -> None:
    """A model rebuilt with pretrained=None and given the trained state_dict predicts the same."""
    trained = MobileNetUNet(in_channels=3, n_classes=2, pretrained=str(torchvision_file), decoder_channels=SMALL)
    rebuilt = MobileNetUNet(in_channels=3, n_classes=2, decoder_channels=SMALL)
    assert torch.equal(rebuilt.input_mean, torch.zeros(1, 3, 1, 1)) and rebuilt.pretrained_modules() == []
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(trained.eval()(x), rebuilt.eval()(x))


def test_mismatched_keys_and_shapes_are_named(donor: MobileNetV2Encoder, tmp_path: Path) -> None:
    state = dict(donor.state_dict())
    del state["features.3.conv.1.0.weight"]
    state["features.19.0.weight"] = torch.zeros(1)
    state["features.18.0.weight"] = torch.zeros(640, 320, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        MobileNetUNet(in_channels=3, n_classes=1, pretrained=str(tmp_path / "bad.pth"))
    message = str(err.value)
    assert "missing keys: features.3.conv.1.0.weight" in message
    assert "unexpected keys: features.19.0.weight" in message
    assert "features.18.0.weight (640, 320, 1, 1) vs model (1280, 320, 1, 1)" in message


def test_width_multiplier_does_not_fit_imagenet_weights(torchvision_file: Path) -> None:
    with pytest.raises(CheckpointError, match="shape mismatches: features.0.0.weight"):
        MobileNetUNet(in_channels=3, n_classes=1, pretrained=str(torchvision_file), width_mult=0.5)


def test_missing_or_corrupt_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither 'imagenet' nor an existing file"):
        MobileNetUNet(in_channels=3, n_classes=1, pretrained=str(tmp_path / "absent.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read pretrained weights"):
        MobileNetUNet(in_channels=3, n_classes=1, pretrained=str(tmp_path / "junk.pth"))


def test_imagenet_is_fetched_from_the_official_url(monkeypatch: pytest.MonkeyPatch, donor: MobileNetV2Encoder) -> None:
    calls = []

    def fake_load(url: str, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append(url)
        return dict(donor.state_dict())

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load)
    model = MobileNetUNet(in_channels=3, n_classes=3, pretrained="imagenet", decoder_channels=SMALL)
    assert calls == [IMAGENET_URL] == ["https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"]
    _assert_encoder_equals(model, donor)


def test_imagenet_without_network_says_how_to_pass_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match=r"mobilenet_v2-b0353104\.pth.*pretrained=/path/to/"):
        MobileNetUNet(in_channels=3, n_classes=1, pretrained="imagenet")


@pytest.mark.parametrize("in_channels", [1, 7])
def test_stem_adapts_rgb_weights_keeping_the_response_scale(
    in_channels: int, torchvision_file: Path, donor: MobileNetV2Encoder
) -> None:
    model = MobileNetUNet(
        in_channels=in_channels, n_classes=1, pretrained=str(torchvision_file), decoder_channels=SMALL
    )
    rgb = donor.features[0][0].weight.detach()  # [32,3,3,3]
    stem = model.encoder.features[0][0].weight.detach()  # [32,in_channels,3,3]
    assert stem.shape == (32, in_channels, 3, 3)
    assert torch.allclose(stem, (rgb.sum(1, keepdim=True) / in_channels).expand_as(stem))
    # a gray image in every channel excites the stem exactly as the same image in R, G and B
    gray = torch.rand(1, 1, 16, 16)
    assert torch.allclose(
        F.conv2d(gray.expand(1, in_channels, 16, 16), stem, padding=1),
        F.conv2d(gray.expand(1, 3, 16, 16), rgb, padding=1),
        atol=1e-5,
    )
    # everything after the stem is loaded as is; non-RGB inputs use the mean ImageNet mean/std
    assert torch.equal(model.encoder.features[1].conv[1].weight, donor.features[1].conv[1].weight)
    assert model.input_mean.flatten().tolist() == pytest.approx([0.449] * in_channels, abs=1e-6)
    assert model.input_std.flatten().tolist() == pytest.approx([0.226] * in_channels, abs=1e-6)


def test_frozen_encoder_gets_no_grads_and_keeps_batchnorm_in_eval(torchvision_file: Path) -> None:
    model = MobileNetUNet(
        in_channels=3, n_classes=3, pretrained=str(torchvision_file), freeze_encoder=True, decoder_channels=SMALL
    )
    model.train()
    assert model.training and not model.encoder.training
    assert all(not m.training for m in model.encoder.modules())
    assert all(m.training for m in model.decoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    stats_before = model.encoder.features[5].conv[0][1].running_mean.clone()
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    assert torch.equal(model.encoder.features[5].conv[0][1].running_mean, stats_before)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in [*model.decoder.parameters(), *model.head.parameters()])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in [*model.decoder.parameters(), *model.head.parameters()])


def test_freezing_a_random_encoder_warns() -> None:
    with pytest.warns(UserWarning, match="without pretrained weights"):
        MobileNetUNet(in_channels=3, n_classes=1, freeze_encoder=True, decoder_channels=SMALL)


def test_init_weights_spares_the_pretrained_encoder(torchvision_file: Path, donor: MobileNetV2Encoder) -> None:
    model = MobileNetUNet(in_channels=3, n_classes=2, pretrained=str(torchvision_file), decoder_channels=SMALL)
    head_before = model.head.weight.clone()
    init_weights(model, "normal", skip=model.pretrained_modules())
    _assert_encoder_equals(model, donor)
    assert not torch.equal(model.head.weight, head_before)
    assert float(model.head.weight.detach().std()) == pytest.approx(0.02, rel=0.3)


@pytest.mark.parametrize("bad", [(512, 256, 128), (64, 32, 0, 8)])
def test_bad_decoder_channels_raise_config_error(bad: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match="decoder_channels must be 4 positive widths"):
        MobileNetUNet(in_channels=3, n_classes=1, decoder_channels=bad)


def test_a_frozen_encoder_unfreezes_after_its_epochs(torchvision_file: Path) -> None:
    model = MobileNetUNet(in_channels=3, n_classes=3, pretrained=str(torchvision_file), freeze_encoder=True,
                          unfreeze_after=2, decoder_channels=SMALL)
    encoder = {n for n, _ in model.named_parameters() if n.startswith("encoder.") and ".features.18." not in n}
    held = {n for n, p in model.named_parameters() if any(p is q for q in model.optimizer_parameters())}
    assert encoder <= held  # the optimizer holds them from the start, without gradients until then
    model.train()
    for epoch in (1, 2):
        model.on_train_epoch(epoch)
        assert not any(p.requires_grad for n, p in model.named_parameters() if n in encoder)
        assert not model.encoder.training  # frozen BatchNorm statistics
    model.on_train_epoch(3)
    assert all(p.requires_grad for n, p in model.named_parameters() if n in encoder) and model.encoder.training
    assert not any(p.requires_grad for p in model.encoder.features[18].parameters())  # unused, never trained


@pytest.mark.filterwarnings("ignore:MobileNetUNet. freeze_encoder=True without pretrained")
@pytest.mark.parametrize("settings", [{"unfreeze_after": 0, "freeze_encoder": True},
                                      {"unfreeze_after": 2, "freeze_encoder": False},
                                      {"unfreeze_after": True, "freeze_encoder": True}])
def test_unfreeze_after_needs_a_frozen_encoder_and_a_count(settings: dict) -> None:
    with pytest.raises(ConfigError, match="unfreeze_after"):
        MobileNetUNet(in_channels=3, n_classes=1, decoder_channels=SMALL, **settings)


def test_training_leaves_the_encoder_alone_until_it_unfreezes(torchvision_file: Path, tmp_path: Path) -> None:
    from seg.train.fit import fit
    from tests.tiny import compose_cfg

    def encoder_after(epochs: int) -> dict[str, torch.Tensor]:
        run = tmp_path / f"e{epochs}"
        fit(compose_cfg(["model=mobilenet_unet", f"model.pretrained={torchvision_file}", "model.freeze_encoder=true",
                         "model.unfreeze_after=1", "model.decoder_channels=[16,8,8,4]", f"trainer.epochs={epochs}"]),
            run)
        state = load_checkpoint(run / "checkpoints/last.pt")["model"]
        return {k: v for k, v in state.items() if k.startswith("encoder.features.1.")}

    start = MobileNetUNet(in_channels=3, n_classes=1, pretrained=str(torchvision_file)).encoder.state_dict()
    one, two = encoder_after(1), encoder_after(2)
    assert all(torch.equal(v, start[k.removeprefix("encoder.")]) for k, v in one.items())  # epoch 1: frozen
    assert any(not torch.equal(v, one[k]) for k, v in two.items())  # epoch 2 trained it


def test_resuming_a_frozen_pretrained_run_says_nothing_of_a_random_encoder(torchvision_file: Path,
                                                                            tmp_path: Path) -> None:
    import warnings

    from seg.train.fit import fit
    from seg.train.resume import resumed_config
    from tests.tiny import compose_cfg

    args = ["model=mobilenet_unet", f"model.pretrained={torchvision_file}", "model.freeze_encoder=true",
            "model.decoder_channels=[16,8,8,4]", "trainer.epochs=1"]
    fit(compose_cfg(args), tmp_path / "r")
    overrides = [f"resume={tmp_path / 'r/checkpoints/last.pt'}", "trainer.epochs=2"]
    cfg = resumed_config(compose_cfg(overrides), tmp_path / "r", overrides, {"model", "dataset"})
    assert cfg.model.pretrained is None and cfg.model.freeze_encoder  # weights from the checkpoint, still frozen
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(cfg, tmp_path / "r")
    assert not [w for w in seen if "random encoder" in str(w.message)]
    assert load_checkpoint(tmp_path / "r/checkpoints/last.pt")["epoch"] == 2
