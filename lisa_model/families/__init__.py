"""The registry of model families (like segment_anything's `sam_model_registry`): a checkpoint names or reveals
its family, and everything else asks the family object instead of branching on its name.

    family_named("uground")                    # by name (a `family=` override, our own config's "family")
    detect_family(raw_config, weight_keys)     # a released checkpoint, from config.json and its key names
"""
from __future__ import annotations

from typing import Iterable, Mapping

from ..checkpoint import CheckpointError
from .base import AnswerParts, Family, FamilyLosses, ImageGeometry, LayerChoice, MaskPrompts
from .glamm import GLAMM
from .gsva import GSVA
from .lisa import LISA
from .read import READ
from .uground import UGROUND

# Detection order: the more specific families first, LISA (the base) last.
FAMILIES: dict[str, Family] = {f.name: f for f in (GSVA, GLAMM, UGROUND, READ, LISA)}


def family_named(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise CheckpointError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def detect_family(raw_config: Mapping, keys: Iterable[str], where: str = "checkpoint") -> Family:
    """The family of a released checkpoint; CheckpointError listing what was found when none recognises it."""
    keys = list(keys)
    for family in FAMILIES.values():
        if family.matches(raw_config, keys):
            return family
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
    known = "; ".join(f"{f.name}: {', '.join(f.architectures) or 'by key names'}" for f in FAMILIES.values())
    raise CheckpointError(
        f"{where}: no model family recognises this checkpoint (architectures {raw_config.get('architectures')}, "
        f"model_type {raw_config.get('model_type')!r}, key prefixes {prefixes[:12]}"
        f"{' ...' if len(prefixes) > 12 else ''}); known families - {known}; pass family= to choose one")


__all__ = ["AnswerParts", "FAMILIES", "Family", "FamilyLosses", "ImageGeometry", "LayerChoice", "MaskPrompts",
           "detect_family", "family_named"]
