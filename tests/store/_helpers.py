"""Shared helper for store tests: write a small artifact."""

from __future__ import annotations

from tasks.store import ArtifactRef, ArtifactStore, artifact_key


def put(store: ArtifactStore, stage: str = "lora", payload: bytes = b"weights", *,
        inputs: dict[str, str] | None = None, config: dict | None = None) -> ArtifactRef:
    """Write a small two-file artifact (one nested) and return its verified ref."""
    config = {"payload": payload.hex()} if config is None else config
    inputs = inputs or {}
    key = artifact_key(stage, "1", config, inputs)
    with store.writer(stage, key, config=config, inputs=inputs) as d:
        (d / "data.bin").write_bytes(payload)
        (d / "sub").mkdir()
        (d / "sub" / "info.txt").write_text("nested")
    ref = store.get(stage, key)
    assert ref is not None
    return ref
