"""Cheap checks that run before any expensive step: models are resolved from their configs (no weights
loaded), layers and sites are checked against them, datasets and the registry's disk are looked at.

Every check raises an :class:`~atlascli.errors.AtlasError` with one line and a hint; nothing here writes
to the registry or runs a model.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlascli.errors import InputError, NotFoundError
from atlascli.models import ZOO, check_site, package_dir, remote_code_refused, resolve_device
from atlascli.paths import model_cache_dir

ZOO_CONFIGS: dict[str, dict[str, Any]] = {
    "gemma3-270m": {"model_type": "gemma3_text", "n_layers": 18, "hidden": 640, "mlp": 2048, "heads": 4,
                    "kv_heads": 1, "head_dim": 256, "gated": True},
    "smollm2-135m-instruct": {"model_type": "llama", "n_layers": 30, "hidden": 576, "mlp": 1536, "heads": 9,
                              "kv_heads": 3, "head_dim": 64, "gated": True},
}
"""Known shapes of the zoo's causal LMs (as in their .gguf metadata), so no weights need reading."""

DTYPES = ("float32", "bfloat16", "float16")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ModelInfo:
    """What a model's config says, without loading its weights."""

    name: str
    """What the user asked for."""
    source: str
    """``zoo``, ``gguf`` (local file), ``folder`` (local transformers folder) or ``hub``."""
    n_layers: int
    """Number of transformer blocks."""
    hidden: int
    """Residual width (sites ``resid`` and ``mlp_out``)."""
    mlp: int
    """MLP width (site ``mlp``)."""
    params_per_layer: int
    """Weights of one block (attention + MLP), for cost estimates."""
    ready: bool = True
    """Whether the weights load fast (False: a .gguf still to be dequantised, 20-70 s once)."""

    def width(self, site: str) -> int:
        """Feature width of a site."""
        return self.mlp if site == "mlp" else self.hidden


def hub_offline() -> bool:
    """Whether the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if env:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _info(name: str, source: str, shape: dict[str, Any], ready: bool = True) -> ModelInfo:
    h, mlp, heads = int(shape["hidden"]), int(shape["mlp"]), int(shape.get("heads") or 1)
    head_dim = int(shape.get("head_dim") or h // heads)
    kv = int(shape.get("kv_heads") or heads)
    attn = h * head_dim * (2 * heads + 2 * kv)
    per_layer = attn + (3 if shape.get("gated", True) else 2) * h * mlp
    return ModelInfo(name, source, int(shape["n_layers"]), h, mlp, per_layer, ready)


def _shape_from_config(cfg: Any) -> dict[str, Any]:
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not n_layers or not hidden:
        raise InputError(f"cannot read the number of layers / hidden size of {type(cfg).__name__}",
                         "atlas supports Llama, Gemma 2/3, Qwen2, Mistral, GPT-2, GPT-NeoX families")
    mlp = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return {"model_type": getattr(text, "model_type", None), "n_layers": n_layers, "hidden": hidden, "mlp": mlp,
            "heads": getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None),
            "kv_heads": getattr(text, "num_key_value_heads", None), "head_dim": getattr(text, "head_dim", None),
            "gated": getattr(text, "model_type", "") not in {"gpt2", "gpt_neox", "gptj"}}


def _gguf_shape(path: Path) -> dict[str, Any]:
    import gguf

    fields = gguf.GGUFReader(str(path)).fields

    def get(key: str) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else None

    arch = get("general.architecture")
    shape = {"model_type": arch, "n_layers": get(f"{arch}.block_count"), "hidden": get(f"{arch}.embedding_length"),
             "mlp": get(f"{arch}.feed_forward_length"), "heads": get(f"{arch}.attention.head_count"),
             "kv_heads": get(f"{arch}.attention.head_count_kv"), "head_dim": get(f"{arch}.attention.key_length")}
    if not shape["n_layers"] or not shape["hidden"]:
        raise InputError(f"{path} has no block_count / embedding_length metadata", "is it a causal LM .gguf?")
    if isinstance(shape["mlp"], list):  # per-layer list in some architectures
        shape["mlp"] = max(shape["mlp"])
    shape["mlp"] = shape["mlp"] or 4 * shape["hidden"]
    return shape


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within ``timeout`` seconds (once per process)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_hint(name: str) -> str:
    return (f"HF_HUB_OFFLINE is set: use a zoo name (`atlas models`), a local folder or .gguf, or put it in the "
            f"Hugging Face cache while online (`hf download {name}`), or unset HF_HUB_OFFLINE")


def _hub_config(name: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The config of a Hub model: from the cache when offline (never waits on the network), else fetched."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from transformers import AutoConfig

    try:
        offline = hub_offline()
        if not offline and not hub_reachable():  # no network: answer from the cache now, not after retries
            if not isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
                raise NotFoundError(f"unknown model {name!r}: not a zoo name or a local path, not in the Hugging Face "
                                    "cache, and the Hub cannot be reached (offline?)",
                                    "use a zoo name (`atlas models`), a local folder or .gguf, or retry online")
            offline = True
        if offline:
            cached = try_to_load_from_cache(name, "config.json", revision=revision)
            if not isinstance(cached, str):
                raise NotFoundError(f"unknown model {name!r}: not a zoo name or a local path, and offline it is not "
                                    "in the Hugging Face cache", _offline_hint(name))
            weights = [try_to_load_from_cache(name, f, revision=revision)
                       for f in ("model.safetensors", "model.safetensors.index.json")]
            if not any(isinstance(w, str) for w in weights):
                raise NotFoundError(f"{name}: offline, its config is in the Hugging Face cache but not its "
                                    "safetensors weights", _offline_hint(name))
            path = cached
        else:
            path = hf_hub_download(name, "config.json", revision=revision, etag_timeout=5)
    except HFValidationError:
        raise NotFoundError(f"unknown model {name!r}: not a zoo name, a local path or a Hugging Face id",
                            "see `atlas models`, or give a folder with config.json or a .gguf file") from None
    except GatedRepoError:
        raise NotFoundError(f"{name} is a gated model and this machine has no access to it",
                            f"accept its license on https://huggingface.co/{name} and run `hf auth login`") from None
    except RepositoryNotFoundError:
        raise NotFoundError(f"unknown model {name!r}: not a zoo name, a local path, or a model on the Hugging Face Hub",
                            "check the spelling (private repos need `hf auth login`)") from None
    except RevisionNotFoundError:
        raise NotFoundError(f"{name} has no revision {revision!r}", "pass an existing branch, tag or commit") from None
    except NotFoundError:
        raise
    except Exception as exc:  # network down, timeouts, proxy errors
        raise NotFoundError(f"unknown model {name!r}: the Hugging Face Hub cannot be reached and it is not in the "
                            f"cache ({exc.__class__.__name__})",
                            "use a zoo name (`atlas models`) or a local folder, or retry online") from None
    try:
        return AutoConfig.from_pretrained(str(Path(path).parent), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if (refused := remote_code_refused(name, exc, trust_remote_code)) is not None:
            raise refused from None
        raise


def probe_model(name: str, revision: str | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """Resolve a zoo name, local folder/.gguf or Hub id to its shape, reading configs only."""
    if name in ZOO:
        entry = ZOO[name]
        if entry.gguf_file is None:
            raise InputError(f"{name} is an embedding model, not a causal LM", "pick a foundation or subject model")
        package_dir(entry.package, entry.pip)
        ready = any(model_cache_dir().glob(f"{name}-*/atlas-cache.json"))
        return _info(name, "zoo", ZOO_CONFIGS[name], ready)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            ready = any(model_cache_dir().glob(f"{path.stem}-*/atlas-cache.json"))
            return _info(name, "gguf", _gguf_shape(path), ready)
        if not path.is_dir() or not (path / "config.json").exists():
            raise NotFoundError(f"{path} has no config.json", "point at a transformers model folder or a .gguf file")
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception as exc:
            if (refused := remote_code_refused(name, exc, trust_remote_code)) is not None:
                raise refused from None
            raise InputError(f"cannot read {path / 'config.json'} ({exc.__class__.__name__}: {exc})",
                             "is it a transformers causal LM folder?") from None
        return _info(name, "folder", _shape_from_config(cfg))
    return _info(name, "hub", _shape_from_config(_hub_config(name, revision, trust_remote_code)))


def check_layers(info: ModelInfo, layers: tuple[int, ...] | list[int], site: str) -> None:
    """Site known and every layer within range (same wording as :func:`atlascli.models.check_layer`)."""
    check_site(site)
    if not layers:
        raise InputError("no layers given", "pass --layers, e.g. --layers 3,12")
    check_depth(info, layers)


def check_depth(info: ModelInfo, layers: tuple[int, ...] | list[int]) -> None:
    """Every layer within the model's depth."""
    for layer in layers:
        if not 0 <= layer < info.n_layers:
            raise InputError(f"layer {layer} is out of range for {info.name} ({info.n_layers} layers)",
                             f"valid layers are 0..{info.n_layers - 1}")


def check_subject_depth(subject: str | None, layers: list[int] | tuple[int, ...]) -> None:
    """:func:`check_depth` for ``subject`` when its depth can be read without loading it (zoo, .gguf, local folder,
    cached hub config); silent when it cannot. Called where a missing alignment would otherwise be answered with an
    `atlas fit` that cannot succeed."""
    if not subject or not layers:
        return
    try:
        info = probe_model(subject)
    except Exception:  # noqa: BLE001 - an unknown depth is not this check's error
        return
    check_depth(info, layers)


def check_runtime(device: str, dtype: str) -> None:
    """Device available and dtype known."""
    resolve_device(device)
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")


def split_size(dataset: Any, split: str) -> int:
    """Sentences in a split of a dataset artifact (from its provenance; no file is read)."""
    if split not in {"train", "test"}:
        raise InputError(f"unknown split {split!r}", "use train or test")
    n = dataset.provenance.get(f"n_{split}")
    if n is None:
        from atlascli.corpus import load_split

        n = len(load_split(dataset, split))
    if int(n) <= 0:
        raise InputError(f"split {split!r} of dataset {dataset.id} is empty", "prepare a larger dataset")
    return int(n)


def check_limit(limit: int | None, what: str = "--limit") -> None:
    """A sentence limit, when given, is positive."""
    if limit is not None and limit < 1:
        raise InputError(f"{what} must be at least 1, got {limit}", f"drop {what} to use the whole split")


def human_bytes(n: float) -> str:
    """``1.2 GB`` style."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def check_disk(root: Path, need_bytes: int) -> None:
    """The registry folder (or its nearest existing parent) is writable and has roughly enough free space."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to {probe} (the registry is {root})",
                         "fix its permissions or point ATLAS_HOME at a writable folder")
    free = shutil.disk_usage(probe).free
    if need_bytes > 0 and free < need_bytes * 1.1:
        raise InputError(f"not enough disk space: this needs about {human_bytes(need_bytes)}, "
                         f"{human_bytes(free)} free under {probe}",
                         "free some space, point ATLAS_HOME elsewhere, or use --limit")
