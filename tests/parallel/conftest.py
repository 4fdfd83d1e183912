"""Parallel fixtures: no model hub (the tiny models are built locally)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
