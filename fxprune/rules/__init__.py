"""The per-op channel rule table (importing this package registers every rule)."""
from . import aten, attention, conv, elementwise, norm, reduce, shape  # noqa: F401
from .base import RULES, Rule, rule

__all__ = ["RULES", "Rule", "rule"]
