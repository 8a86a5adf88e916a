"""The pairing logic of the matching UI: which clicks make which pairs. Pure Python, no PsychoPy.

A click selects a row; a click on a row of the other side then pairs the two (in either order,
candidate first as the instructions say, or reference first). A new pair replaces any pair either
row was in, so pairs can always be changed. Clicking the selected row again deselects it; clicking
another row of the same side moves the selection. Confirm is accepted only with all three pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PairingState:
    pairs: dict[int, int] = field(default_factory=dict)  # reference row -> candidate row
    selected: tuple[str, int] | None = None

    def click(self, side: str, row: int) -> None:
        if side not in ("reference", "candidate") or row not in (0, 1, 2):
            raise ValueError(f"bad click {side!r} {row!r}")
        if self.selected is None or self.selected[0] == side:
            self.selected = None if self.selected == (side, row) else (side, row)
            return
        ref, cand = (row, self.selected[1]) if side == "reference" else (self.selected[1], row)
        self.pairs = {r: c for r, c in self.pairs.items() if r != ref and c != cand}
        self.pairs[ref] = cand
        self.selected = None

    @property
    def complete(self) -> bool:
        return len(self.pairs) == 3

    def assignment(self) -> list[int]:
        """assignment[i] = candidate row paired with reference row i (all three must be paired)."""
        if not self.complete:
            raise ValueError("assignment is incomplete")
        return [self.pairs[i] for i in range(3)]

    def partner_of_candidate(self, cand: int) -> int | None:
        for r, c in self.pairs.items():
            if c == cand:
                return r
        return None
