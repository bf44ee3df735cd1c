"""Loading the REFER annotation pickles (`refs(unc).p`, `refs(umd).p`) without letting them run code.

A pickle can call any importable function while it loads. REFER pickles hold only dicts, lists, strings and
numbers, so the unpickler here refuses every global - a file that needs one is not a REFER file.
"""
from __future__ import annotations

import pickle
from pathlib import Path


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _DataOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")  # Python-2 pickles (the REFER release) store str as bytes
        self._source = source

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(f"{self._source}: refused to load {module}.{name} - REFER pickles hold plain data "
                                "only; this file is not one (or has been tampered with)")


def load_data_pickle(path: str | Path):
    """The plain-data content of a pickle file; UnsafePickleError if it references any class or function."""
    path = Path(path)
    with open(path, "rb") as f:
        return _DataOnlyUnpickler(f, str(path)).load()
