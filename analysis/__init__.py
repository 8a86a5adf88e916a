"""Analyse sessions: accuracy by condition and mixed-effects models."""
