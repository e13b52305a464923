"""The t5x_like test suite; folders mirror the packages (see docs/architecture.md)."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
