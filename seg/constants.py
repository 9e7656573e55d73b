"""Values every layer shares. Imports nothing from seg, so the lowest modules (data, losses,
metrics, weight maps, overlays) can all take them from here."""

IGNORE_INDEX = 255  # mask value of pixels that are not scored: no loss, no metric, no colour
