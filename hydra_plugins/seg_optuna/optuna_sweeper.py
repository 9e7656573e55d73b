"""The class `hydra/sweeper=seg_optuna` names; everything it does is seg.search.sweeper's. Importing this
module stays cheap (Hydra imports every plugin module at each start): Optuna loads only when a search runs."""

from seg.search import sweeper


class OptunaSweeper(sweeper.OptunaSweeper):
    """seg.search.sweeper.OptunaSweeper under the name Hydra accepts for a plugin."""
