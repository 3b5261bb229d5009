"""atlas: align an unknown language model to a labeled Concept Atlas (Atlas-Alignment).

Python API (see :mod:`atlascli.api`)::

    import atlascli as atlas

    alignment = atlas.load_alignment(subject="smollm2-135m-instruct", layer=12)
    hits = alignment.search("secrets").features          # subject features encoding the concept
    with atlas.steering(model, concept="london", strength=35, tokenizer=tok):
        model.generate(**tok("Tell me a joke", return_tensors="pt"), max_new_tokens=40)

Names are imported lazily, so ``import atlascli`` stays instant.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

__all__ = ["Alignment", "AtlasError", "load_alignment", "load_atlas", "steering", "__version__"]

_LAZY = {"Alignment": "atlascli.api", "load_alignment": "atlascli.api", "AtlasError": "atlascli.errors"}


def steering(model: Any, concept: str | None = None, **kwargs: Any) -> Any:
    """Steer a loaded model along an atlas concept inside a ``with`` block (see :func:`atlascli.api.steering`).

    >>> with steering(model, concept="london", strength=35, tokenizer=tok):  # doctest: +SKIP
    ...     model.generate(**tok("Tell me a joke", return_tensors="pt"), max_new_tokens=40)
    """
    from atlascli.api import steering as _steering

    return _steering(model, concept, **kwargs)


def load_atlas(ref: str | None = None) -> Any:
    """The Concept Atlas by id / name (newest when None): labels, coherence, SAE path.

    >>> atlas = load_atlas()  # doctest: +SKIP
    >>> atlas.label(17)  # doctest: +SKIP
    """
    from atlascli.atlas import resolve_atlas

    return resolve_atlas(ref)


class _Package(types.ModuleType):
    """Keeps ``atlascli.steering`` the API function: importing the submodule ``atlascli.steering`` (eq. 4 hooks,
    reached as ``from atlascli.steering import ...``) must not rebind the package attribute."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "steering" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atlascli' has no attribute {name!r}")
