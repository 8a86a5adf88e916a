"""Run a participant session of the matching task (PsychoPy)."""
