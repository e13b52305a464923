"""See gin_configs/__init__.py."""
