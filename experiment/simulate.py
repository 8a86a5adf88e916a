"""Scripted participants for piloting, the demo and tests. Pure Python, no PsychoPy.

A policy decides an assignment and the clicks that make it; the runner turns each click into a
real (emulated) PsychoPy mouse press at the row's screen position, so the task code runs exactly as
for a person. Policies:

* ``random``   - a uniformly random permutation (chance: 1/3 of rows, 1/6 of trials).
* ``oracle``   - always the correct assignment.
* ``noisy:P``  - the correct assignment with probability P, otherwise one of the five wrong
  permutations, uniformly: whole-trial accuracy is P, row accuracy P + (1 - P) / 5. This models an
  attentive participant with imperfect discrimination, so catch trials (identical images on both
  sides) are always right; ``random`` models an inattentive one and fails them at chance, which is
  what the analysis's catch-trial exclusion is for.
* ``features[:LAYER]`` - image-computable (``experiment.image_observer``): matches rows by the
  similarity of a fixed network's features of the images shown, solved as an assignment.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np

from experiment.design import correct_assignment

PERMUTATIONS = [list(p) for p in itertools.permutations(range(3))]
_NOISY = re.compile(r"^noisy:(0(\.\d+)?|1(\.0+)?)$")


def parse_policy(text: str) -> str:
    """Validate a policy string; returns it unchanged (it is recorded in session.json as ``simulated``)."""
    from experiment.image_observer import is_feature_policy

    if text in ("random", "oracle") or _NOISY.match(text) or is_feature_policy(text):
        return text
    raise ValueError(f"invalid --simulate policy {text!r}: use random, oracle, noisy:P with 0 <= P <= 1 (e.g. noisy:0.8) "
                     f"or features[:LAYER] (image-computable, e.g. features:inception3b)")


class SimulatedParticipant:
    """Chooses assignments and click sequences; seeded, so a resumed simulation is reproducible."""

    def __init__(self, policy: str, seed: int, stimset_root: Path | None = None):
        self.policy = parse_policy(policy)
        self.root = stimset_root  # the feature observer reads the trial's images from here
        self.observer: dict | None = None  # the image-computable observer's network and weights
        if self.policy.startswith("features"):
            from experiment.image_observer import observer_record

            # load torch and the network before PsychoPy opens its window (torch imported into a
            # running pyglet/GL process crashed it), and say what the observer's network is
            self.observer = observer_record(self.policy)  # recorded in session.json (simulated_observer)
            self.observer_weights = self.observer["weights"]["source"]
            if self.observer_weights == "random":
                print("simulated observer 'features': RANDOM-WEIGHT GoogLeNet (torchvision's pretrained weights are "
                      "not in its cache); its answers are those of an untrained network.", flush=True)
        self.p = float(policy.split(":")[1]) if policy.startswith("noisy:") else None
        self.rng = np.random.default_rng(seed)

    def choose_assignment(self, candidate_units: tuple[int, ...] | list[int], is_catch: bool = False,
                          trial=None) -> list[int]:
        if self.policy.startswith("features"):  # image-computable: sees only the trial's images
            from experiment.image_observer import choose, feature_layer

            if trial is None or self.root is None:
                raise ValueError("the features observer needs the trial and the stimulus set folder")
            return choose(self.root, trial.reference_files, trial.candidate_files, feature_layer(self.policy))
        right = correct_assignment(candidate_units)
        if self.policy == "oracle" or (is_catch and self.policy != "random"):
            return right
        if self.policy == "random":
            return list(PERMUTATIONS[int(self.rng.integers(6))])
        if self.rng.random() < self.p:
            return right
        wrong = [p for p in PERMUTATIONS if p != right]
        return list(wrong[int(self.rng.integers(5))])

    def click_plan(self, assignment: list[int]) -> list[tuple[str, int | None]]:
        """Clicks that produce ``assignment``: for each reference row (random order) its candidate row
        then the reference row, then confirm. The random policy first makes one pair it then changes,
        so the re-pairing path is exercised too."""
        plan: list[tuple[str, int | None]] = []
        if self.policy == "random":
            plan += [("candidate", int(self.rng.integers(3))), ("reference", int(self.rng.integers(3)))]
        for i in self.rng.permutation(3):
            plan += [("candidate", int(assignment[int(i)])), ("reference", int(i))]
        return plan + [("confirm", None)]
