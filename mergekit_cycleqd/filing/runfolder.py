"""Layout of a run folder, the resume guard, and rebuilding any model of a run.

RUN/recipe.yml         the resolved recipe (absolute paths)
RUN/ledger.sqlite      every model with its scores (the source of truth)
RUN/children/          genome files or weight folders, one per model
RUN/elites/<id>.yml    a mergekit YAML per elite; mergekit-cycleqd-yaml rebuilds it
RUN/samples/           per-sample evaluation logs
RUN/final/             final models and results.json
RUN/report/            report.html, report.md and figures
RUN/ledger.backup.sqlite  a consistent copy of the ledger, refreshed while the run goes
RUN/.lock              held (flock) by the one process that writes the run

Readers (report, materialize, publish, similarity) never take the lock, so they work
while a run is going.
"""

from __future__ import annotations

import copy
import fcntl
import os
from pathlib import Path
from typing import Any

import yaml

from mergekit_cycleqd.errors import RunFolderError
from mergekit_cycleqd.filing.atomic import write_text_atomic
from mergekit_cycleqd.filing.ledger import ChildRecord, Ledger
from mergekit_cycleqd.recipe import Recipe, dump_recipe, parse_recipe

# Recipe fields that may change when a run is resumed.
_RESUMABLE_CHANGES = {"search.generations", "workers", "output", "final"}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data}


def _without_hub_ids(recipe: dict) -> dict:
    """Hub ids only credit models on cards: adding them later does not change the run."""
    recipe = copy.deepcopy(recipe)
    for model in [recipe.get("base_model"), *(recipe.get("experts") or [])]:
        if isinstance(model, dict):
            model.pop("hub_id", None)
    return recipe


class RunLock:
    """One writer per run folder: an exclusive flock held for the life of the process.

    The kernel drops the lock when the process dies in any way (SIGKILL included), so
    no stale lock is ever left behind; the file only records the holder's PID for the
    message another process gets.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunFolderError(
                f"cannot write into the run folder {self.path.parent} ({error.strerror}); "
                f"a read-only (archived) run can still be read with report, materialize and "
                f"publish, but resuming it needs a writable copy"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(
                f"{self.path.parent} is being written by another mergekit-cycleqd process "
                f"(PID {holder}); a run folder has one writer. Wait for it to finish or stop "
                f"it (kill -INT {holder}); report, materialize and publish work meanwhile."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class RunFolder:
    def __init__(self, root: Path):
        self.root = Path(root).absolute()

    def lock(self) -> RunLock:
        """Take the writer's lock, or refuse naming the process that holds it."""
        return RunLock(self.root).acquire()

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def recipe_path(self) -> Path:
        return self.root / "recipe.yml"

    @property
    def final_dir(self) -> Path:
        return self.root / "final"

    def exists(self) -> bool:
        return self.ledger_path.exists()

    def prepare(self, recipe: Recipe, resume: bool) -> None:
        """Create the folder, or check that resuming it with this recipe is sound."""
        text = dump_recipe(recipe)
        if self.exists():
            if not resume:
                with Ledger(self.ledger_path) as ledger:
                    count = ledger.count()
                raise RunFolderError(
                    f"{self.root} already holds a run ({count} models scored). "
                    f"Continue it with --resume, or start fresh with another --out "
                    f"(or delete the folder)."
                )
            self._check_same_run(yaml.safe_load(self._stored_recipe_text()), yaml.safe_load(text))
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("children", "elites", "samples", "final"):
            (self.root / sub).mkdir(exist_ok=True)
        write_text_atomic(self.recipe_path, text)

    def _stored_recipe_text(self) -> str:
        """The recipe the run started with: recipe.yml, else the copy kept in the ledger."""
        if self.recipe_path.exists():
            return self.recipe_path.read_text(encoding="utf-8")
        with Ledger(self.ledger_path) as ledger:
            stored = ledger.meta().get("recipe")
        if stored is None:
            raise RunFolderError(
                f"cannot resume {self.root}: recipe.yml is missing and the ledger holds no copy "
                f"of the recipe; start a fresh run folder"
            )
        return stored

    def _check_same_run(self, stored: dict, new: dict) -> None:
        stored, new = _without_hub_ids(stored), _without_hub_ids(new)
        old_flat, new_flat = _flatten(stored), _flatten(new)
        changed = [
            key
            for key in sorted(set(old_flat) | set(new_flat))
            if old_flat.get(key) != new_flat.get(key)
            and not any(key == p or key.startswith(p + ".") for p in _RESUMABLE_CHANGES)
        ]
        if changed:
            details = ", ".join(
                f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in changed[:5]
            )
            raise RunFolderError(
                f"cannot resume {self.root}: the recipe differs from the one it was started with "
                f"({details}). Only search.generations, workers, output and final may change; "
                f"start a fresh run folder for a different search."
            )

    def load_recipe(self) -> Recipe:
        if not self.recipe_path.exists():
            raise RunFolderError(f"{self.root} is not a run folder (no recipe.yml)")
        return parse_recipe(self.recipe_path.read_text(encoding="utf-8"), str(self.recipe_path))

    def elite_config_path(self, child_id: int) -> Path:
        return self.root / "elites" / f"{child_id}.yml"

    def write_elite_config(self, breeder: Any, record: ChildRecord) -> Path:
        """A mergekit YAML that rebuilds this model (mergekit-cycleqd-yaml CONFIG OUT)."""
        path = self.elite_config_path(record.id)
        config = _relative_inside(
            breeder.mergekit_config(self.root / record.model_path), self.root, path.parent
        )
        header = (
            f"# CycleQD model {record.id} ({record.name}); scores {record.scores}\n"
            f"# rebuild: mergekit-cycleqd-yaml {path.name} OUT_DIR\n"
        )
        write_text_atomic(path, header + yaml.safe_dump(config, sort_keys=False))
        return path


def _relative_inside(value: Any, root: Path, start: Path) -> Any:
    """Paths inside the run folder become relative to ``start`` (``../children/...``).

    A run folder copied or moved elsewhere then still rebuilds its elites;
    ``mergekit-cycleqd-yaml`` resolves such paths against the YAML file's folder.
    """
    if isinstance(value, dict):
        return {k: _relative_inside(v, root, start) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_inside(v, root, start) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        target = Path(value).resolve()
        if target.is_relative_to(root.resolve()):
            return os.path.relpath(target, start.resolve())
    return value


def model_file(run_dir: Path, child_id: int | str) -> Path:
    """The stored model file of a run's child (or of the final model, ``"final"``)."""
    folder = RunFolder(run_dir)
    if not folder.exists():
        raise RunFolderError(f"{folder.root} is not a run folder (no ledger.sqlite)")
    with Ledger(folder.ledger_path) as ledger:
        if child_id == "final":
            finals = [r for r in ledger.children(role="final") if r.name == "cycleqd-final"]
            if not finals:
                raise RunFolderError(f"{folder.root} has no final model yet; finish the run first")
            record = finals[-1]
        else:
            try:
                record = ledger.child(int(child_id))
            except KeyError as error:
                raise RunFolderError(str(error.args[0])) from None
        if not record.model_path:
            raise RunFolderError(
                f"model {record.id} ({record.name}) has no stored weights: status {record.status}"
                + (f" ({record.error})" if record.error else "")
            )
        return folder.root / record.model_path
