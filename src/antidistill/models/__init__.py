"""Model backends and the embedded default model. Heavy imports (torch, transformers) stay inside functions."""

from antidistill.models.embedded import ModelSource, embedded_gguf_path, resolve_model

__all__ = ["ModelSource", "embedded_gguf_path", "resolve_model"]
