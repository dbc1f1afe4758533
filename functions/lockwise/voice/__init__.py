"""The voice domain: audio intake, scoring, voiceprints, enrollment, verification at the door and known recordings.
The speaker models themselves live in ``voice.model``, which knows no database, HTTP or domain rule (checked)."""
