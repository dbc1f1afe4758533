"""Model tooling: stand-in SpeechBrain model directories for tests and local runs (no Hub access)."""
