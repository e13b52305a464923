"""`python -m t5x_like <command> ...`: the same program as `t5x-like <command> ...`."""
import sys

from t5x_like.cli.main import main

sys.exit(main())
