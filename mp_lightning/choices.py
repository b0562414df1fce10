"""`Choice`: the type of a config option that takes one of a fixed set of values.

Declared as the field's type in a schema dataclass, OmegaConf rejects any other value when the experiment
is composed, before any work starts, and names the valid ones. A member compares equal to its value and
prints as it, and checkpoints keep the plain string (`Stage` saves configs with `enum_to_str`), so that
weights-only loading needs no class of ours.
"""
from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value, key: str):
        """The member for `value`, or a ConfigError naming `key` and the valid values (for a choice that must be
        known before the schema is built, as `model.inner_stage`)."""
        from mp_lightning.errors import ConfigError

        try:
            return cls(str(value))
        except ValueError:
            raise ConfigError(f"config key '{key}': '{value}' is not one of "
                              f"{', '.join(m.value for m in cls)}") from None
