"""Standing queries: patterns in the member graph, detected as events arrive (the language in
:mod:`hopcast.patterns.language`)."""

from hopcast.patterns.language import Pattern, PatternError, from_yaml, load

__all__ = ["Pattern", "PatternError", "from_yaml", "load"]
