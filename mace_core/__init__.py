"""MACE: mass concept erasure for diffusers text-to-image models (pure torch/diffusers/peft core).

This package holds the method only: no Prefect, no file layout, no printing. Every public function
takes tensors, modules and typed config sections, and returns tensors or small dataclasses.
See ``docs/ARCHITECTURE.md`` and the module docstrings for the equations (``mace_spec.md`` sections).
"""

__version__ = "0.1.0"
