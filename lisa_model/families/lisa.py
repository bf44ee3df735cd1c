"""LISA (xinlai/LISA-7B-v1, -13B-llama2, -explanatory) and LISA++ (Senqiao/LISA_Plus_7b): the base behaviour.

Both are released as `LISAForCausalLM`; LISA++ differs only in its LLaVA-1.5 base (two-layer projector), which the
loader reads from the weights, and in answering with several [SEG] for several instances, which every family
handles.
"""
from .base import Family


class Lisa(Family):
    name = "lisa"
    architectures = ("LISAForCausalLM",)


LISA = Lisa()
