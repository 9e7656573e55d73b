"""Batched, on-device training augmentation: `Augment` (configs in configs/augmentation/)."""

from seg.augment.pipeline import PADDING_MODES, Augment

__all__ = ["Augment", "PADDING_MODES"]
