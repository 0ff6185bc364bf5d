"""antidistill: mark, watch and prove the unauthorized distillation of a served language model."""

__version__ = "0.1.0"
