"""Gin configs. These __init__ files exist only so gin's package-path reader
resolves `include 'gin_configs/...'` from any working directory (a namespace
package would make it fail); nothing here is Python."""
