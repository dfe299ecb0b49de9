"""The lab: training, evaluations, benchmarks, recipes and the notebook. The product never imports it."""

import importlib
import sys
from pathlib import Path


def bind_installed_kernels() -> None:
    """Run from the repository's root (`python -m lab...`, pytest), the folder kernels/ would shadow the
    installed PyPI package `kernels` (Hugging Face's, imported by transformers 5, which the lab's parity
    checks and peers use). The product itself is imported as infini_reader.kernels; bind the bare name
    to the installed package, if there is one, before anything asks for it."""
    if "kernels" in sys.modules:
        return
    root = str(Path(__file__).resolve().parents[1])
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in ("", ".", root) and Path(p or ".").resolve() != Path(root)]
    try:
        importlib.import_module("kernels")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved


bind_installed_kernels()
