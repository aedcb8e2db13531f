"""Thin click layer: one module per command group; maps errors to exit codes."""
