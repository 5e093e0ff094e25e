"""What a site keeps about its own differential privacy, in its ``state_dir`` and never sent: the
ledger of DP-SGD steps it has released, and the secret its noise is drawn from.

The ledger records, per release (a round or a fine-tuning, keyed by a digest of the request), the
steps it took, beside the settings the budget was planned with (epsilon, delta, sampling rate,
accountant, steps in all) and the noise multiplier chosen for them. It is rewritten atomically
after each release, so a site that restarts goes on counting from where it stopped; a release
answered again under the same key replaces its entry instead of adding to it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

from fedseg.errors import UserError
from fedseg.files import write_text_atomic

LEDGER = "dp_ledger.json"
SECRET = "dp_secret"


class PrivacyLedger:
    """The releases of one site under one budget; ``noise_multiplier`` is None until one is chosen."""

    def __init__(self, state_dir: Path | None, settings: dict):
        self.path = None if state_dir is None else state_dir / LEDGER
        self.settings = settings
        self.releases: dict[str, int] = {}
        self.noise_multiplier: float | None = None
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def steps(self) -> int:
        return sum(self.releases.values())

    def steps_besides(self, key: str) -> int:
        return self.steps - self.releases.get(key, 0)

    def record(self, key: str, steps: int) -> None:
        self.releases[key] = steps
        if self.path is not None:
            ledger = {**self.settings, "noise_multiplier": self.noise_multiplier, "releases": self.releases}
            write_text_atomic(self.path, json.dumps(ledger, indent=1, sort_keys=True))

    def _load(self) -> None:
        try:
            saved = json.loads(self.path.read_text())
            releases, sigma = saved["releases"], saved["noise_multiplier"]
            good = (isinstance(releases, dict) and all(isinstance(k, str) and type(v) is int and v >= 0
                                                       for k, v in releases.items())
                    and isinstance(sigma, float) and math.isfinite(sigma) and sigma > 0)
        except (OSError, ValueError, KeyError, TypeError):
            good = False
        if not good:
            raise UserError(f"{self.path}: this site's privacy ledger is damaged; it records the privacy the site has "
                            "spent, so training cannot go on without it: restore it, or start a new run (a new --out)")
        if {k: saved.get(k) for k in self.settings} != self.settings:
            changed = ", ".join(f"{k} {saved.get(k)!r:.30} here {v!r:.30}" for k, v in self.settings.items()
                                if saved.get(k) != v)
            raise UserError(f"{self.path} was written for other privacy settings ({changed}); the privacy this site "
                            "spent cannot be carried over: resume with the same experiment, or start a new run "
                            "(a new --out)")
        self.releases, self.noise_multiplier = releases, sigma


def kept_secret(state_dir: Path | None, name: str = SECRET) -> bytes:
    """32 random bytes that never leave their owner (a site's DP secret; the coordinator's client-DP
    noise secret under another ``name``): kept in ``state_dir`` (written once, readable by its owner
    only), or held in memory when there is none."""
    if state_dir is None:
        return os.urandom(32)
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(os.urandom(32).hex())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, path)  # never replaces a secret another process wrote first
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    text = path.read_text(errors="replace").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise UserError(f"{path}: this DP secret is damaged; restore it, or start a new run (a new --out)")
    return bytes.fromhex(text)
