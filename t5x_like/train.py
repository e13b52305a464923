"""`python -m t5x_like.train ...`, as T5X users type it: the same program as `t5x-like train`."""
if __name__ == "__main__":
    import sys

    from t5x_like.cli.jax_platforms import choose_jax_platforms
    choose_jax_platforms()  # as `t5x-like` does: no libtpu noise on CPU/GPU hosts
    from t5x_like.cli.train import main
    sys.exit(main())
