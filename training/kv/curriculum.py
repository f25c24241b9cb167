"""The five-phase curriculum of multi-teacher KV distillation, as named presets in a YAML recipe.

A phase picks the teachers it uses (the first n decoders, all decoders, or all teachers with the
encoders) and the settings that define it (fusion, fixed weights, entropy mode); everything else comes
from the ``kv_*`` options. ``KDConfig.kv_phase`` runs one phase throughout; ``kv_schedule`` such as
``"1:0,4:200,5:400"`` switches phase at those optimizer steps (``PhaseCallback``). Each phase's
settings are logged when it starts. The shipped recipe is ``training/kv/recipes/curriculum.yaml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback

from data.records import yaml_error

logger = logging.getLogger(__name__)

DEFAULT_RECIPE = Path(__file__).resolve().parent / "recipes" / "curriculum.yaml"
PHASE_SETTINGS = ("fusion", "weights", "entropy", "router", "granularity", "similarity", "prototype", "tau")


@dataclass(frozen=True)
class Phase:
    number: int
    name: str
    teachers: int | str  # n decoders | "all_decoders" | "all"
    min_teachers: int = 1
    needs_encoder: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    def select(self, kinds: Sequence[str], names: Sequence[str]) -> list[int]:
        """Indices of the teachers this phase uses, given each teacher's kind (decoder | encoder)."""
        decoders = [i for i, k in enumerate(kinds) if k == "decoder"]
        if self.teachers == "all":
            chosen = list(range(len(kinds)))
        elif self.teachers == "all_decoders":
            chosen = decoders
        else:
            chosen = decoders[: int(self.teachers)]
        if len(chosen) < self.min_teachers:
            raise ValueError(
                f"phase {self.number} ({self.name}) needs at least {self.min_teachers} "
                f"{'teachers' if self.teachers == 'all' else 'decoder teachers'}; got {[names[i] for i in chosen]} of "
                f"{list(names)}: add teachers to kv_teachers or choose another phase"
            )
        if self.needs_encoder and not any(kinds[i] == "encoder" for i in chosen):
            raise ValueError(
                f"phase {self.number} ({self.name}) needs an encoder among the teachers (e.g. minilm); got {list(names)}"
            )
        return chosen

    def describe(self, names: Sequence[str], chosen: Sequence[int]) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"phase {self.number}: {self.name} | teachers {[names[i] for i in chosen]} | {settings}"


def load_recipe(path: str | Path | None = None) -> dict[int, Phase]:
    """The phases of a recipe file (default: the shipped one); errors name the file and the phase."""
    import yaml

    file = Path(path) if path else DEFAULT_RECIPE
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"cannot read the curriculum recipe: {yaml_error(file, e)}") from None
    except OSError as e:
        raise ValueError(f"{file}: cannot read the curriculum recipe ({e.strerror or e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("phases"), dict):
        raise ValueError(f"{file}: a curriculum recipe is a mapping with 'phases: {{1: {{...}}, ...}}'")
    phases = {}
    for key, body in raw["phases"].items():
        if not isinstance(body, dict):
            raise ValueError(f"{file}: phase {key} is not a mapping")
        body = dict(body)
        try:
            number = int(key)
            teachers = body.pop("teachers")
            phase = Phase(
                number=number,
                name=str(body.pop("name", f"phase {number}")),
                teachers=teachers if teachers in ("all", "all_decoders") else int(teachers),
                min_teachers=int(body.pop("min_teachers", 1)),
                needs_encoder=bool(body.pop("needs_encoder", False)),
                settings=body,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{file}: phase {key}: {e!r} (needs 'teachers': a count, all_decoders or all)") from None
        unknown = set(phase.settings) - set(PHASE_SETTINGS)
        if unknown:
            raise ValueError(f"{file}: phase {key}: unknown settings {sorted(unknown)}; allowed: {', '.join(PHASE_SETTINGS)}")
        phases[number] = phase
    return phases


def parse_schedule(spec: str, phases: dict[int, Phase]) -> list[tuple[int, int]]:
    """``"1:0,4:200"`` -> ``[(0, 1), (200, 4)]`` (start step, phase), sorted; the first must start at 0."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        phase, sep, step = part.partition(":")
        if not sep or not phase.strip().isdigit() or not step.strip().isdigit():
            raise ValueError(f"kv_schedule {spec!r}: {part!r} is not 'phase:start_step' (e.g. '1:0,4:200')")
        if int(phase) not in phases:
            raise ValueError(f"kv_schedule {spec!r}: no phase {int(phase)} in the recipe (phases {sorted(phases)})")
        out.append((int(step), int(phase)))
    out.sort()
    if not out or out[0][0] != 0:
        raise ValueError(f"kv_schedule {spec!r}: the first phase must start at step 0")
    if len({s for s, _ in out}) != len(out):
        raise ValueError(f"kv_schedule {spec!r}: two phases start at the same step")
    return out


def phase_at(schedule: Sequence[tuple[int, int]], step: int) -> int:
    return [phase for start, phase in schedule if start <= step][-1]


def apply_phase(settings: Any, phase: Phase) -> Any:
    """``settings`` (a KVSettings) with the phase's own settings put in."""
    return replace(settings, **phase.settings)


class PhaseCallback(TrainerCallback):
    """Switches the KV objective's phase at the scheduled optimizer steps."""

    def __init__(self, objective: Any, schedule: Sequence[tuple[int, int]]) -> None:
        self.objective, self.schedule = objective, list(schedule)

    def on_step_begin(self, args, state, control, **kwargs):
        phase = phase_at(self.schedule, state.global_step)
        if phase != self.objective.phase:
            self.objective.set_phase(phase)
        return control
