"""trustboot: a signed network-boot chain, end to end.

The package is a library first; ``trustboot.cli`` is a thin client over it.
"""

__version__ = "0.1.0"
