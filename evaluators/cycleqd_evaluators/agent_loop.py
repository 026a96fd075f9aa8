"""Batched multi-turn agent dialogues (AgentBench DB and OS, task servers).

Every round is ONE batched generation over all dialogues still running; the
environment side of each dialogue (running SQL, a shell command in a sandbox)
then runs concurrently in a thread pool. This is what makes agent evaluation
fast: the model sees a full batch and slow environments overlap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from mergekit_cycleqd.evaluate import GenerationConfig, Message, ModelBackend


class Episode(ABC):
    """The environment side of one dialogue."""

    finished: bool = False

    @abstractmethod
    def start(self) -> list[Message]:
        """Set the environment up and return the opening conversation."""

    @abstractmethod
    def step(self, reply: str) -> str | None:
        """Act on the agent's reply; return the next user message, or None when done."""

    def on_round_limit(self) -> None:
        """Called when the round limit ends the dialogue; default: nothing."""

    def close(self) -> None:
        """Tear the environment down (always called)."""


def run_episodes(
    backend: ModelBackend,
    episodes: Sequence[Episode],
    config: GenerationConfig,
    max_rounds: int,
    concurrency: int = 8,
    desc: str = "dialogues",
) -> None:
    """Drive all episodes to completion, batching generation across them."""
    conversations: list[list[Message]] = [[] for _ in episodes]
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        try:
            for index, opening in enumerate(pool.map(lambda e: e.start(), episodes)):
                conversations[index] = list(opening)
            active = list(range(len(episodes)))
            with tqdm(total=len(episodes), desc=desc, leave=False, disable=None) as bar:
                for _ in range(max_rounds):
                    if not active:
                        break
                    replies = backend.generate([conversations[i] for i in active], config)
                    for i, reply in zip(active, replies):
                        conversations[i].append({"role": "assistant", "content": reply})
                    observations = list(
                        pool.map(lambda pair: episodes[pair[0]].step(pair[1]), zip(active, replies))
                    )
                    still_running = []
                    for i, observation in zip(active, observations):
                        if observation is None:
                            episodes[i].finished = True
                            bar.update(1)
                        else:
                            conversations[i].append({"role": "user", "content": observation})
                            still_running.append(i)
                    active = still_running
                for i in active:
                    episodes[i].on_round_limit()
                    episodes[i].finished = True
                    bar.update(1)
        finally:
            list(pool.map(lambda e: e.close(), episodes))
