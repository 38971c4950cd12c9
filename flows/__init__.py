"""Prefect flows, one per user job: ``erase``, ``prior``, ``add`` (wiring only; logic lives in mace_core)."""
