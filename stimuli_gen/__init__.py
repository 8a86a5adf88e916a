"""Stimulus generation: unit sampling, natural exemplars and feature visualizations.

Import submodules explicitly; this package's __init__ imports nothing heavy so that
``stimuli_gen.builtin_collection`` works without torch.
"""
