"""The models: plain `nn.Module`s, one module of this package each (mlp.py, cnn.py, resnet.py), and `build_model`,
which builds the one configs/model/<name>.yaml names. No engine code here: every engine trains these exact classes.

Add a model (README: Add your own model): a module here, src/{{ cookiecutter.package }}/core/models/<name>.py,
with an nn.Module class, and configs/model/<name>.yaml whose `_target_` names the class and whose other keys are its
arguments, so that `hydra.utils.instantiate(cfg.model)` returns the module. The model checks its own arguments
(checks.py: a bad value is one line naming model.<key>).

evaluate.py{% if cookiecutter.include_deployment %}, export.py, predict.py and serve.py{% endif %} build the model that a checkpoint's training config names. A file
chooses nothing that runs: `_target_` must be an nn.Module class defined in a module of this package, and every
other key a plain value (no nested `_target_`), where hydra.utils.instantiate would import and call anything.
"""

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from functools import cache
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..errors import UserError
from .checks import shown

# Keys of hydra.utils.instantiate that are not arguments: a model's config has `_target_` and arguments only.
HYDRA_KEYS = ("_target_", "_recursive_", "_convert_", "_partial_", "_args_")


@cache
def registered_models() -> dict[str, type[nn.Module]]:
    """`_target_` -> class: every nn.Module class defined in a module of this package. Found, not listed: a new
    module here is a new model."""
    found: dict[str, type[nn.Module]] = {}
    for info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def names_a_target(value: Any) -> bool:
    """Whether a (nested) plain value holds a `_target_`: hydra.utils.instantiate would build it."""
    if isinstance(value, dict):
        return "_target_" in value or any(names_a_target(item) for item in value.values())
    return isinstance(value, list) and any(names_a_target(item) for item in value)


def model_arguments(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A model config (DictConfig or dict, interpolations resolved) -> (its `_target_`, its arguments as plain
    values); UserError for anything that is not a registered model and its arguments."""
    if isinstance(cfg, DictConfig):
        config = OmegaConf.to_container(cfg, resolve=True)
    else:
        config = OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)
    target = config.pop("_target_", None)
    models = registered_models()
    if target not in models:
        raise UserError(
            f"model._target_={shown(target)} is not valid: an nn.Module class of a module in {__name__} "
            f"(src/{{ cookiecutter.package }}/core/models/<name>.py), one of {', '.join(sorted(models))}"
        )
    for key, value in config.items():
        if key in HYDRA_KEYS or names_a_target(value):
            raise UserError(
                f"model.{key} is not valid: a model's config holds its _target_ and plain argument values "
                "(build sub-modules in the model's __init__)"
            )
    parameters = inspect.signature(models[target]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key, value in config.items():
        if key not in named and not takes_any:
            raise UserError(
                f"model.{key}={shown(value)} is not valid: {target} takes no argument {key} "
                f"(it takes {', '.join(named)})"
            )
    for name in named:
        if name not in config and parameters[name].default is inspect.Parameter.empty:
            raise UserError(f"model.{name} is missing: {target} needs it (add it to its configs/model/ file)")
    return target, config


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """The model of configs/model/<name>.yaml: its `_target_` class called with the other keys, as
    hydra.utils.instantiate(cfg.model) does, for a class of this package only (see above)."""
    target, arguments = model_arguments(cfg)
    return registered_models()[target](**arguments)


def check_model(cfg: Mapping[str, Any]) -> None:
    """The model config and the model's own checks, before any work: the model built once on the meta device
    (no memory, no random draws), so that a bad model.<key> is one line."""
    with torch.device("meta"):
        build_model(cfg)
