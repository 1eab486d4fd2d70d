"""Version of the rollingops Python package."""

__version__ = '0.1.0'
