"""Manipulated networks as controls (Geirhos et al. 2023): networks whose feature visualizations
mislead while their behaviour on natural images is unchanged.

* ``silent``: silent units, a parallel filter that is zero on every natural image of a collection.
* ``fooling``: the fooling circuit, a natural-vs-visualization classifier that switches a unit to a
  template unit whose kernel is a target picture.
* ``store``: a manipulated model on disk (``weights.pt`` + ``manipulation.json``) and its loading.
* ``verify``: the verification report written with every manipulated model.
* ``cli``: ``python -m stimuli_gen.manipulate.cli`` (make / train).
"""
