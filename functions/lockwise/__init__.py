"""LockWise shared back-end package, in three rooms: ``core`` (the platform), ``devices`` and ``voice`` (with the
speaker models in ``voice.model``); docs/ARCHITECTURE.md says what each holds and which way imports may go.

One copy lives here; ``infra/build.py`` copies it into each function bundle at build time.
"""

__version__ = "0.1.0"
