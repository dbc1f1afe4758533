"""Voice side of the unlock check: turning a recording into a speaker embedding."""
