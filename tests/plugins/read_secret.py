"""Attack: find the grading-time secret seed wherever a plugin can reach it (the environment
variable, `lab.workload`'s module globals and reader, any `Workload` object alive in the
process through `gc` and its `_seed_words`), regenerate the run's samples with it as
precompute.py does with the public seed, and answer from the table (honest compute on a
miss). Without the secret it falls back to the public seed."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

from lab.errors import ConfigError
from lab.repository import ModelHandle

sys.path.insert(0, str(Path(__file__).resolve().parent))  # attack_kit.py lives here
from attack_kit import TableRunner  # noqa: E402

SECRET_ENV = "SERVELAB_SECRET_SEED"


class ReadSecretRunner(TableRunner):
    name = "read-secret"

    def load_impl(self, model: ModelHandle) -> None:
        from lab.workload import Workload

        super().load_impl(model)
        public = model.config.public_seed
        words, where = self.find_seed_words(public)
        self.marker.update(found_secret=words is not None, found_in=where)
        workload = Workload(model, seed=public)
        if words is not None:
            workload._seed_words = words  # the run's (public, secret) words
        self.precompute(workload)

    def find_seed_words(self, public: int) -> tuple[tuple[int, ...] | None, list[str]]:
        """(public, secret) seed words and where they were found, or (None, [])."""
        found: dict[str, tuple[int, ...]] = {}
        raw = os.environ.get(SECRET_ENV, "").strip()
        if raw.isdigit():
            found["os.environ"] = (public, int(raw))
        module = sys.modules.get("lab.workload")
        if module is not None:
            cached = getattr(module, "_secret_seed", None)
            if isinstance(cached, int):
                found["lab.workload._secret_seed"] = (public, cached)
            try:
                secret = module.read_secret_seed()
            except ConfigError as exc:  # a malformed secret: as good as none to this attack
                self.marker.update(reader_error=str(exc))
                secret = None
            if secret is not None:
                found["lab.workload.read_secret_seed()"] = (public, secret)
            cls = getattr(module, "Workload", None)
            for obj in gc.get_objects():
                if cls is not None and type(obj) is cls:
                    seed_words = tuple(getattr(obj, "_seed_words", ()))
                    if len(seed_words) > 1:
                        found["gc: Workload._seed_words"] = seed_words
        if not found:
            return None, []
        return next(iter(found.values())), sorted(found)
