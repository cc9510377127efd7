"""Make the top-level jepsen-style/ directory importable (it is not a package: its
name has a dash, and it is run as scripts)."""
from __future__ import annotations

import os
import sys

JEPSEN_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "jepsen-style"))
if JEPSEN_DIR not in sys.path:
    sys.path.insert(0, JEPSEN_DIR)
