"""Where the blocks of a model accelerate spread over devices (``device_map``) sit, and where hooks gather their
activations."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atlascli.models import blocks


def _device_name(value: Any) -> str:
    """accelerate's device map values (GPU index, "cpu", "disk", torch.device) as one spelling: cuda:0, cpu, disk."""
    if isinstance(value, int):
        return f"cuda:{value}"
    text = str(value)
    return "cuda:0" if text == "cuda" else text


def _mapped_device(device_map: dict[str, Any], module: str) -> str | None:
    """Where ``device_map`` puts ``module``: its own entry or its nearest mapped ancestor (or its first mapped child
    when accelerate split it)."""
    owners = [k for k in device_map if k == "" or module == k or module.startswith(k + ".")]
    if owners:
        return _device_name(device_map[max(owners, key=len)])
    children = [k for k in device_map if k.startswith(module + ".")]
    return _device_name(device_map[children[0]]) if children else None


def placement(model: nn.Module) -> dict[str, list[int]]:
    """Device -> the transformer blocks it holds, in block order (``disk`` / ``cpu`` for offloaded blocks, which
    accelerate streams to the GPU when they run). A model on one device gives one entry."""
    layers = blocks(model)
    prefix = next((name for name, module in model.named_modules() if module is layers), "")
    device_map = getattr(model, "hf_device_map", None) or {}
    out: dict[str, list[int]] = {}
    for i, block in enumerate(layers):
        where = _mapped_device(device_map, f"{prefix}.{i}" if prefix else str(i)) if device_map else None
        if where is None:
            param = next(block.parameters(), None)
            where = _device_name(param.device) if param is not None else "cpu"
        out.setdefault(where, []).append(i)
    return out


def describe_placement(where: dict[str, list[int]]) -> str:
    """``{"cuda:0": [0, 1, 2], "cuda:1": [3, 4]}`` -> ``"layers 0-2 on cuda:0, 3-4 on cuda:1"``."""
    parts = []
    for device, layers in where.items():
        runs: list[str] = []
        start = prev = layers[0]
        for layer in [*layers[1:], None]:
            if layer is not None and layer == prev + 1:
                prev = layer
                continue
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            if layer is not None:
                start = prev = layer
        parts.append(f"{','.join(runs)} on {device}")
    return "layers " + ", ".join(parts)


def home_device(model: nn.Module) -> torch.device | None:
    """For a model accelerate dispatched (``hf_device_map``), the device its inputs go to and captured activations
    are gathered on: the input embeddings' (CPU when those are offloaded); None for a model it did not dispatch."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return None
    get_embeddings: Any = getattr(model, "get_input_embeddings", None)
    emb = get_embeddings() if callable(get_embeddings) else None
    name = next((n for n, m in model.named_modules() if m is emb), None) if emb is not None else None
    where = (_mapped_device(device_map, name) if name is not None else None) or _device_name(next(iter(device_map.values())))
    return torch.device("cpu" if where in {"disk", "meta"} else where)


def gather_device(model: nn.Module) -> torch.device | None:
    """Where hooks gather activations of a model spread over several devices (:func:`home_device`); None when it
    sits on one device (activations then stay where they are)."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map or len({_device_name(v) for v in device_map.values()}) < 2:
        return None
    return home_device(model)
