"""Seeded random directions for the baselines: a fresh draw per (seed, concept or feature, draw, layer), so "random"
is a distribution of directions, never one direction reused for every concept."""

from __future__ import annotations

import hashlib

import torch


def seed_of(*key: object) -> int:
    """A stable 63-bit seed from any key (independent of Python's hash randomisation)."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode("utf-8"), digest_size=8).digest(), "little") >> 1


def random_direction(dim: int, *key: object, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A unit Gaussian direction in ``dim`` dimensions, determined by ``key``."""
    gen = torch.Generator().manual_seed(seed_of(*key))
    r = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (r / r.norm().clamp_min(1e-30)).to(dtype)


def random_like(vectors: dict[int, torch.Tensor], *key: object) -> dict[int, torch.Tensor]:
    """Per layer, a random direction with the norm of that layer's vector, drawn for ``(*key, layer)``."""
    return {layer: random_direction(v.numel(), *key, layer).reshape(v.shape).to(v.dtype) * v.double().norm().to(v.dtype)
            for layer, v in vectors.items()}
