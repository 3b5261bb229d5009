"""Artifact registry: safetensors + JSON folders with checksummed manifests."""

from atlascli.registry.store import KINDS, SCHEMA_VERSION, Artifact, Problem, Registry, Staging, slug

__all__ = ["KINDS", "SCHEMA_VERSION", "Artifact", "Problem", "Registry", "Staging", "slug"]
