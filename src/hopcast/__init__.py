"""hopcast: a real-time member graph and live-event delivery platform."""

from __future__ import annotations

__version__ = "0.1.0"
