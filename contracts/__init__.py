"""The file contracts between the three stages of fvmatch.

``stimuli_gen`` writes a *stimulus set*, ``experiment`` reads it and writes *session data*,
``analysis`` reads sessions and writes *results*. These modules are the only place where the
layout, columns and versions of those files are defined; ``data/README.md`` documents them.
Readers validate what they load and raise :class:`ContractError` naming the file and field.

No torch and no PsychoPy here: every stage imports this package.
"""

from contracts.common import ContractError, sha256_file, software_versions

__all__ = ["ContractError", "sha256_file", "software_versions"]
