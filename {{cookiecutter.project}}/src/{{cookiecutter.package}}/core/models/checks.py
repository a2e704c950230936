"""What a model checks of its own arguments. A bad value is one line naming the key, `model.<key>=<value> is not
valid: <what is accepted>`, before any work: launch.check_config builds the model once on the meta device."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_list(value: Any) -> bool:
    """A list, tuple or OmegaConf ListConfig (hydra.utils.instantiate passes lists of the config as ListConfig)."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def whole_numbers(value: Any, least: int, min_length: int) -> bool:
    return (
        is_list(value)
        and len(value) >= min_length
        and all(isinstance(item, int) and not isinstance(item, bool) and item >= least for item in value)
    )


@dataclass(frozen=True)
class Accepts:
    accepted: str  # what the argument accepts, in words: the end of the error line
    test: Callable[[Any], bool]


PROBABILITY = Accepts("a probability in [0.0, 1.0)", lambda v: number(v) and 0 <= v < 1)
WHOLE_NUMBERS = Accepts(
    "a list of whole numbers of at least 1 (may be empty), e.g. [256,128]", lambda v: whole_numbers(v, 1, 0)
)
NONEMPTY_WHOLE_NUMBERS = Accepts(
    "a list of at least one whole number of at least 1, e.g. [32,64]", lambda v: whole_numbers(v, 1, 1)
)


def shown(value: Any) -> str:
    """A value as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if is_list(value):
        return "[" + ",".join(shown(item) for item in value) + "]"
    return str(value)


def require(key: str, value: Any, accepts: Accepts) -> None:
    """Raise UserError naming model.<key> when `value` is not what the argument accepts."""
    if not accepts.test(value):
        raise UserError(f"model.{key}={shown(value)} is not valid: {accepts.accepted}")
