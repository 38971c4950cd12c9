"""Shared test helpers: tolerant comparisons and offline tokenizers."""
