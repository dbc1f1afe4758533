"""LockWise shared back-end package: settings, errors, logging, database, Firebase access.

One copy lives here; ``infra/build.py`` copies it into each function bundle at build time.
"""

__version__ = "0.1.0"
