"""The toy family's settings, and what follows from them alone (mixtures, held-out words)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mergekit_cycleqd.toy.skills import SKILLS, held_out_words

DEFAULT_SKILLS: tuple[str, ...] = ("shift", "atbash", "rot13")


@dataclass(frozen=True)
class ToyConfig:
    """Sizes and training budgets of the toy family (defaults: ~1.5 min on one idle core)."""

    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 1
    """hidden_size / num_heads is the head dim: keep it 64 (vLLM's CPU attention needs that)."""
    max_positions: int = 64
    min_len: int = 3
    max_len: int = 8
    n_opt: int = 200
    n_val: int = 200
    n_test: int = 300
    batch_size: int = 64
    base_steps: int = 1200
    base_lr: float = 3e-3
    base_target: float | None = 0.6
    """If set, pretraining stops (checked every 50 steps) once the base's mean exact
    match over the skills, on 100 probe words per skill drawn like training words
    (never evaluation words), reaches this value: the base then lands middling whatever
    the seed (the skills are learned in sharp jumps whose timing depends on the seed;
    seed 1 without it learns every cipher to ~0.98). None: always ``base_steps``."""
    base_mixture: tuple[tuple[str, float], ...] = (
        ("copy", 20.0),
        ("shift", 1.0),
        ("atbash", 1.0),
        ("rot13", 1.0),
    )
    """Weights of the base's pretraining mixture: mostly the copy format, a little of
    each skill (tuned so that the base scores roughly 0.5-0.7 on every skill)."""
    expert_steps: int = 300
    expert_lr: float = 1e-3
    expert_replay: float = 0.5
    """Share of each expert's fine-tuning batches drawn from the replay mixture."""
    expert_replay_mixture: tuple[tuple[str, float], ...] | None = (
        ("copy", 1.0),
        ("shift", 1.0),
        ("atbash", 1.0),
        ("rot13", 1.0),
    )
    """What the replay share is drawn from (None: the base mixture)."""
    expert_replay_kl: float = 5.0
    """Weight of the KL-to-base loss on replay examples; 0 replays ground-truth answers
    instead (the first toy's behaviour: task vectors then interfere badly)."""
    skills: tuple[str, ...] = DEFAULT_SKILLS

    def __post_init__(self) -> None:
        unknown = [s for s in self.skills if s not in SKILLS]
        if unknown:
            raise ValueError(f"ToyConfig.skills: unknown {unknown}; known: {', '.join(SKILLS)}")
        if not 0.0 <= self.expert_replay < 1.0:
            raise ValueError(f"ToyConfig.expert_replay must be in [0, 1), got {self.expert_replay}")
        if self.expert_replay_kl < 0.0:
            raise ValueError(
                f"ToyConfig.expert_replay_kl must be >= 0, got {self.expert_replay_kl}"
            )
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"ToyConfig: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ToyConfig: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )

    @classmethod
    def from_json(cls, values: dict) -> ToyConfig:
        """The config :meth:`to_json` wrote (JSON lists back to tuples)."""
        values = dict(values)
        values["skills"] = tuple(values["skills"])
        for key in ("base_mixture", "expert_replay_mixture"):
            if values[key] is not None:
                values[key] = tuple((name, float(weight)) for name, weight in values[key])
        return cls(**values)

    def to_json(self) -> dict:
        """The config as it reads back from JSON (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def expert_mixture(config: ToyConfig, skill: str) -> tuple[tuple[str, float], ...]:
    """Ground-truth replay (``expert_replay_kl == 0``): the expert's own skill for
    (1 - expert_replay) of its examples, the replay mixture for the rest."""
    if config.expert_replay == 0.0:
        return ((skill, 1.0),)
    mixture = config.expert_replay_mixture or config.base_mixture
    total = sum(weight for _, weight in mixture)
    own = total * (1.0 - config.expert_replay) / config.expert_replay
    return ((skill, own), *mixture)


def evaluation_words(seed: int, config: ToyConfig) -> dict[str, list[str]]:
    """Each skill's opt + val + test words, in that order (all kept out of training)."""
    count = config.n_opt + config.n_val + config.n_test
    return {
        skill: held_out_words(seed, skill, count, config.min_len, config.max_len)
        for skill in config.skills
    }
