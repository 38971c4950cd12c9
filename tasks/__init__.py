"""Thin Prefect tasks, one per stage, over the content-addressed artifact store (``tasks.store``)."""
