"""The search space, written in Hydra's override grammar as hydra-optuna-sweeper reads it, turned into
Optuna distributions, and a trial's parameters turned back into overrides.

    optimizer.lr: tag(log, interval(1e-4, 1e-2))   float, sampled on a log scale (interval: always float)
    optimizer.momentum: interval(0.8, 0.99)         float, uniform
    model.wf: range(4, 7)                           int 4, 5 or 6 (stop excluded, as Hydra's range)
    trainer.batch_size: tag(log, range(8, 65))      int, log scale (step 1)
    loss: choice(dice_bce, bce, dice)               one of the values (also `a,b,c`)
    trainer.epochs: 30                              fixed: the same value for every trial

Keys come from `hydra.sweeper.params` first, then from the command line, and the last word on a key wins:
`seg-train -m hparams_search=unet_optuna loss=bce` searches everything but the loss.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException

from seg.errors import ConfigError

_PARSER = OverridesParser.create()
FORMS = "choice(a, b), range(start, stop[, step]) of ints, interval(low, high), tag(log, interval(...))"


@dataclass
class SearchSpace:
    distributions: dict[str, Any] = field(default_factory=dict)  # override key -> optuna distribution
    fixed: dict[str, str] = field(default_factory=dict)  # override key -> the override every trial gets

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """One job's overrides: the fixed ones, then the trial's values (which win on a shared key: a
        trial resumed after the command line fixed one of its keys keeps its own value)."""
        fixed = [o for k, o in self.fixed.items() if k not in params]
        return [*fixed, *(f"{k}={literal(v)}" for k, v in params.items())]

    def probe(self) -> list[str]:
        """Overrides with one value of each distribution (its first choice, its low end): composing them
        finds a mistyped key before any trial is asked."""
        return self.overrides({k: _first(d) for k, d in self.distributions.items()})


def parse_space(params: Mapping[str, Any], arguments: Sequence[str], parser: OverridesParser) -> SearchSpace:
    """`params` (hydra.sweeper.params) then `arguments` (the command line's overrides), parsed with
    Hydra's grammar; a sweep becomes a distribution, a plain override stays fixed."""
    lines = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    try:
        parsed = parser.parse_overrides(lines)
    except HydraException as exc:
        raise ConfigError(f"cannot read the search space: {str(exc).splitlines()[0]} (forms: {FORMS})") from None
    space = SearchSpace()
    for override in parsed:
        key = override.get_key_element()
        space.distributions.pop(key, None)
        space.fixed.pop(key, None)
        if override.is_sweep_override():
            space.distributions[key] = distribution(override)
        else:
            space.fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
    return space


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override; anything else is refused in one line."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value, line = override.value(), override.input_line or override.get_key_element()
    tags = set(getattr(value, "tags", ()) or ())
    if tags - {"log"}:
        raise ConfigError(f"{line}: unknown tag {sorted(tags - {'log'})[0]!r} (the search space knows `log`)")
    log = "log" in tags
    try:
        if isinstance(value, ChoiceSweep) and not value.shuffle and not log:
            return CategoricalDistribution([_choice(c) for c in override.sweep_iterator()])
        if isinstance(value, RangeSweep) and not value.shuffle:
            start, stop, step = value.start, value.stop, value.step
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (start, stop, step)):
                raise ConfigError(f"{line}: range() is for ints; use interval(low, high) for floats")
            if step <= 0 or stop <= start:
                raise ConfigError(f"{line}: range(start, stop, step) needs start < stop and step > 0")
            return IntDistribution(start, start + step * ((stop - 1 - start) // step), step=step, log=log)
        if isinstance(value, IntervalSweep):
            return FloatDistribution(float(value.start), float(value.end), log=log)
    except ValueError as exc:  # Optuna's own checks: a log scale needs low > 0 and step 1, low <= high
        raise ConfigError(f"{line}: {exc}") from None
    raise ConfigError(f"{line}: not a search-space form Optuna can sample (forms: {FORMS})")


def _choice(element: Any) -> Any:
    """A choice as Optuna stores it: numbers and booleans as they are, anything else as the override text
    that gives it back (`bce`, `'a,b'`, `[1,2]`), so a trial's overrides are exactly what was listed."""
    if isinstance(element, (bool, int, float)):
        return element
    if isinstance(element, str):
        plain = _PARSER.parse_override(f"k={element}").value() if element.strip() == element else None
        return element if isinstance(plain, str) and plain == element else quoted(element)
    return Transformer.encode(element)


def _first(dist: Any) -> Any:
    return dist.choices[0] if hasattr(dist, "choices") else dist.low


def literal(value: Any) -> str:
    """A sampled value as Hydra's grammar reads it back: null, true/false, ints, floats (repr: every
    digit, so a resumed trial gets the same overrides), strings as override text (see _choice)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def quoted(value: str) -> str:
    """A string value for Hydra's grammar, quoted (a path with `:` or spaces, say)."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"
