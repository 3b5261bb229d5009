"""Hooks as context managers that always remove themselves.

``record_sites`` captures a site's activations per forward pass (on the model's input device when
accelerate spread it over several); with ``stop_after`` the forward is cut off right after the last
capture (no later layers, no LM head). ``add_to_sites`` edits
them (steering).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from atlascli.models import site_module
from atlascli.placement import gather_device


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early; caught by :func:`run_until`."""


def _output_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_sites(model: nn.Module, layers: list[int], site: str,
                 stop_after: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Record ``site`` at ``layers`` into the yielded dict (layer -> [batch, seq, width]).

    With ``stop_after`` the hook on the deepest layer raises :class:`StopForward`, so the
    forward pass does no work past it; call the model through :func:`run_until`.
    """
    store: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []
    home = gather_device(model)  # a model spread over devices: every capture comes to its input device

    def make(layer: int, how: str) -> Callable[..., None]:
        def pre_hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            store[layer] = args[0] if home is None else args[0].to(home)
            if stop_after and layer == deepest:
                raise StopForward

        def out_hook(_mod: nn.Module, _args: Any, output: Any) -> None:
            store[layer] = _output_tensor(output) if home is None else _output_tensor(output).to(home)
            if stop_after and layer == deepest:
                raise StopForward

        return pre_hook if how == "pre" else out_hook

    try:
        for layer in sorted(set(layers)):
            module, how = site_module(model, layer, site)
            if how == "pre":
                handles.append(module.register_forward_pre_hook(make(layer, how)))
            else:
                handles.append(module.register_forward_hook(make(layer, how)))
        yield store
    finally:
        for h in handles:
            h.remove()


def run_until(model: nn.Module, **inputs: Any) -> None:
    """Run the model's trunk (no LM head), swallowing :class:`StopForward`."""
    trunk = getattr(model, "model", None) or getattr(model, "transformer", None) or model
    try:
        trunk(**inputs, use_cache=False)
    except StopForward:
        pass


@contextmanager
def add_to_sites(model: nn.Module, site: str,
                 edits: dict[int, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Replace the site's activation ``a`` with ``edit(a)`` at each layer while inside the block."""
    handles = []

    def make(how: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
        def pre_hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (fn(args[0]), *args[1:])

        def out_hook(_mod: nn.Module, _args: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        return pre_hook if how == "pre" else out_hook

    try:
        for layer, fn in edits.items():
            module, how = site_module(model, layer, site)
            if how == "pre":
                handles.append(module.register_forward_pre_hook(make(how, fn)))
            else:
                handles.append(module.register_forward_hook(make(how, fn)))
        yield
    finally:
        for h in handles:
            h.remove()
