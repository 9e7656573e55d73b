"""seg-eval and seg-predict: run a checkpoint's model over images as its training did (seg.inference.core)."""
