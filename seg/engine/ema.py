"""An exponential moving average of a model's weights (`trainer.ema_decay`), updated after every
optimizer step on the device.

Why not torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn, the ecosystem's own? Its
`update_parameters` tests its `n_averaged` tensor twice per call (`n_averaged == 0`, `> 0`): a host
read on every step once that buffer lives on the GPU, which the step loop never does (docs/design.md);
its decay is fixed, so a short run's average stays stuck near the random initialisation (0.999**120 =
0.89 of it after the 120 steps of the default run); and integer buffers (batch norm's
`num_batches_tracked`) go through float arithmetic. So this is the same EMA in a few lines: the step
count is a host int, the decay a host float, and one `torch._foreach_lerp_` per update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (0-based): min(decay, (1 + n) / (10 + n)), the warm-up of
    TensorFlow's ExponentialMovingAverage(num_updates=...) and timm's ModelEma. Early updates follow
    the model closely (0.1, 0.18, 0.25, ...), so the first validations score trained weights and not
    the initialisation; the set decay takes over after (10 d - 1) / (1 - d) updates (890 for 0.99,
    8990 for 0.999). Always on: a fixed decay only makes sense for runs far longer than 1 / (1 - d)."""
    return min(decay, (1 + updates) / (10 + updates))


class ModelEma:
    """`module`: a copy of `source` (same device, layout and state_dict keys) holding the average.

    Batch-norm statistics are averaged with the weights, as timm's ModelEmaV3 and AveragedModel with
    `use_buffers=True` do: the running mean and variance then describe the activations of the averaged
    weights, not of the raw ones, whose statistics would mismatch the EMA's layers. Integer buffers
    (`num_batches_tracked`) are copied."""

    def __init__(self, *, source: nn.Module, decay: float, updates: int = 0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.source, self.decay, self.updates = source, float(decay), int(updates)
        self.module = copy.deepcopy(source).eval().requires_grad_(False)
        pairs = list(zip(self._tensors(self.module), self._tensors(source), strict=True))
        floats = [(e, s) for e, s in pairs if torch.is_floating_point(e)]
        self._ema = [e for e, _ in floats]
        self._src = [s for _, s in floats]
        self._copied = [(e, s) for e, s in pairs if not torch.is_floating_point(e)]

    @staticmethod
    def _tensors(module: nn.Module) -> list[torch.Tensor]:
        """Parameters, then buffers, in the order state_dict has them (the same for both copies)."""
        return [t.detach() for t in (*module.parameters(), *module.buffers())]

    @torch.no_grad()
    def update(self) -> None:
        """ema <- ema + (1 - decay_n) (source - ema): queued kernels only, never a host read."""
        weight = 1.0 - warmed_decay(self.decay, self.updates)
        if self._ema:
            torch._foreach_lerp_(self._ema, self._src, weight)
        for ema, src in self._copied:
            ema.copy_(src)
        self.updates += 1

    def restart(self) -> None:
        """Start the average again from the source's weights (a resume that turns the EMA on)."""
        self.module.load_state_dict(self.source.state_dict())
        self.updates = 0
