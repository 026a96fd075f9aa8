"""Reading a recipe: YAML text -> variables substituted -> schema-checked Recipe.

Every error names the file, the field path and the offending value, and lists every
problem found at once rather than the first."""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from mergekit_cycleqd.errors import RecipeError
from mergekit_cycleqd.recipe.schema import ExpertSpec, MergekitSource, ModelSpec, Recipe


def _short(value: Any, limit: int = 80) -> str:
    """A value as it appears in an error: a mapping by its keys, long values cut, never a
    whole section dumped."""
    if isinstance(value, dict):
        return f"a mapping with keys {', '.join(map(str, value))}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at ``loc`` inside ``model`` (for suggesting a near one)."""
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        nested = _model_in(info.annotation) if info is not None else None
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_error(source: str, error: dict[str, Any], model: type[BaseModel] = Recipe) -> str:
    location = ""
    for part in error["loc"]:
        location += (
            f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
        )
    message = error["msg"].removeprefix("Value error, ")
    where = f"{source}: {location}: " if location else f"{source}: "
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key, _fields_at(model, error["loc"][:-1]), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where}unknown field (got {_short(error['input'])}){hint}"
    if error["type"] == "missing":
        return f"{where}required field is missing"
    if not error["loc"]:  # a whole-recipe rule: the message says what is wrong
        return f"{where}{message}"
    return f"{where}{message} (got {_short(error['input'])})"


def format_validation_error(
    source: str, error: ValidationError, prefix: str = "", *, model: type[BaseModel] = Recipe
) -> str:
    lines = []
    for item in error.errors():
        item = dict(item)
        if prefix:
            item["loc"] = tuple(prefix.split(".")) + tuple(item["loc"])
        lines.append(_format_error(source, item, model))
    return "\n".join(lines)


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|env:[A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute(value: Any, variables: dict[str, str], where: str = "") -> Any:
    """Replace ``${name}`` (a recipe variable) and ``${env:NAME}`` (the environment)."""
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name.startswith("env:"):
                if name[4:] not in os.environ:
                    raise RecipeError(f"{where}: environment variable {name[4:]} is not set")
                return os.environ[name[4:]]
            if name not in variables:
                known = ", ".join(sorted(variables))
                raise RecipeError(f"{where}: unknown variable ${{{name}}}; defined: {known}")
            return variables[name]

        return os.path.expanduser(_VARIABLE.sub(replace, value))
    if isinstance(value, list):
        return [_substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            k: _substitute(v, variables, f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    return value


def parse_recipe(
    text: str,
    source: str = "<recipe>",
    recipe_dir: Path | None = None,
    variables_override: dict[str, str] | None = None,
) -> Recipe:
    """Parse and validate a recipe; raises RecipeError with every mistake listed.

    In any string, ``${recipe_dir}`` is the recipe's folder, ``${assets}`` the
    assets folder, ``${NAME}`` a variable from the recipe's ``vars`` mapping (or
    ``variables_override``, e.g. ``--var NAME=VALUE``), ``${env:NAME}`` an
    environment variable.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping, got {type(raw).__name__}")
    variables = {"recipe_dir": str((recipe_dir or Path.cwd()).resolve())}
    declared = raw.pop("vars", None) or {}
    if not isinstance(declared, dict) or not all(
        isinstance(v, (str, int, float)) for v in declared.values()
    ):
        raise RecipeError(f"{source}: vars: a mapping of names to strings, got {declared!r}")
    declared = {**{k: str(v) for k, v in declared.items()}, **(variables_override or {})}
    for name, value in declared.items():
        variables[name] = str(_substitute(value, variables, f"{source}: vars.{name}"))
    assets = raw.get("assets")
    if isinstance(assets, dict) and isinstance(assets.get("dir"), str):
        assets_dir = _substitute(assets["dir"], variables, f"{source}: assets.dir")
        variables["assets"] = str(Path(assets_dir).absolute())
    raw = _substitute(raw, variables, source)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(format_validation_error(source, error)) from None
    if recipe.from_mergekit_config:
        seeds = recipe.from_mergekit_config
        if isinstance(seeds, str):
            seeds = MergekitSource(path=seeds)
        config_path = Path(seeds.path)
        if not config_path.is_absolute() and recipe_dir is not None:
            beside = recipe_dir / config_path
            config_path = beside if beside.exists() else config_path
        recipe.base_model, recipe.experts = experts_from_mergekit_config(
            config_path, tasks=recipe.task_names, mapping=seeds.tasks, source=source
        )
        try:
            recipe._map_experts_to_tasks()
        except ValueError as error:
            raise RecipeError(f"{source}: from_mergekit_config ({config_path}): {error}") from None
    _validate_evaluator_options(recipe, source)
    _validate_backend_options(recipe, source)
    return recipe


def _validate_evaluator_options(recipe: Recipe, source: str) -> None:
    from mergekit_cycleqd.evaluate.base import evaluator_class

    problems = []
    all_tasks = [("tasks", i, t) for i, t in enumerate(recipe.tasks)]
    all_tasks += [("final.generalisation", i, t) for i, t in enumerate(recipe.final.generalisation)]
    for group, index, task in all_tasks:
        try:
            cls = evaluator_class(task.evaluator)
        except ValueError as error:
            problems.append(
                f"{source}: {group}[{index}].evaluator: {error} (got {task.evaluator!r})"
            )
            continue
        except ImportError as error:
            problems.append(
                f"{source}: {group}[{index}].evaluator: {task.evaluator!r} cannot be imported: {error}"
            )
            continue
        splits = [("opt", "optimisation")] + ([("test", "test")] if task.test is not None else [])
        if task.validation is not None:
            splits.append(("validation", "validation"))
        for split, field_name in splits:
            try:
                cls.Options.model_validate(task.split_options(split))
            except ValidationError as error:
                lines = format_validation_error(source, error, model=cls.Options).splitlines()
                problems += [
                    line.replace(
                        f"{source}: ", f"{source}: {group}[{index}].options/{field_name}.", 1
                    )
                    for line in lines
                ]
    if problems:
        raise RecipeError("\n".join(dict.fromkeys(problems)))


def _validate_backend_options(recipe: Recipe, source: str) -> None:
    """Backend options must be keyword arguments of the backend's constructor.

    Caught here rather than as a TypeError when the model is loaded, minutes later.
    """
    import inspect

    if recipe.backend.kind == "none":
        if recipe.backend.options:
            raise RecipeError(f"{source}: backend.options: backend kind 'none' takes no options")
        return
    from mergekit_cycleqd.evaluate.backends import backend_class

    parameters = inspect.signature(backend_class(recipe.backend.kind).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return  # e.g. vLLM: extra options go to the engine, which checks them
    allowed = [n for n in parameters if n not in ("self", "model_path")]
    for name, value in recipe.backend.options.items():
        if name not in allowed:
            raise RecipeError(
                f"{source}: backend.options.{name}: unknown option for the "
                f"{recipe.backend.kind} backend (got {value!r}); allowed: {', '.join(allowed)}"
            )


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (absolute paths, no variables) as YAML."""
    data = recipe.model_dump(mode="json", exclude_none=False)
    data["from_mergekit_config"] = None
    return yaml.safe_dump(data, sort_keys=False)


def load_recipe(path: str | Path, variables: dict[str, str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    return parse_recipe(path.read_text(encoding="utf-8"), str(path), path.parent, variables)


def experts_from_mergekit_config(
    path: Path,
    *,
    tasks: list[str] | None = None,
    mapping: dict[str, str] | None = None,
    source: str = "<recipe>",
) -> tuple[ModelSpec, list[ExpertSpec]]:
    """Base and experts of an existing mergekit YAML (its base_model and other models).

    Each model is assigned to a task by ``mapping`` (model as written in the config ->
    task), else by name: the task whose name appears in the model's folder name. List
    order is never used: a config listing sort, reverse, double must not make the
    reverse expert the sort model. Without ``tasks`` the experts stay unassigned.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{source}: from_mergekit_config: cannot read {path}: {error}") from None
    base = raw.get("base_model") if isinstance(raw, dict) else None
    if not base:
        raise RecipeError(f"{path}: base_model: a mergekit config used as seeds needs a base_model")
    models: list[str] = []
    entries = list(raw.get("models") or [])
    for slice_ in raw.get("slices") or []:
        entries += slice_.get("sources") or []
    for entry in entries:
        name = entry.get("model") if isinstance(entry, dict) else entry
        if isinstance(name, str) and name != base and name not in models:
            models.append(name)
    if not models:
        raise RecipeError(f"{path}: models: no expert models besides the base")
    if tasks is None:
        return ModelSpec(path=base), [ExpertSpec(path=m) for m in models]
    mapping = mapping or {}
    for model, task in mapping.items():
        if model not in models:
            raise RecipeError(
                f"{source}: from_mergekit_config.tasks: {model!r} is not a model of {path} "
                f"(got {model!r}); its models: {', '.join(models)}"
            )
        if task not in tasks:
            raise RecipeError(
                f"{source}: from_mergekit_config.tasks.{model}: not a task (got {task!r}); "
                f"tasks: {', '.join(tasks)}"
            )
    assigned = {m: mapping.get(m) or _task_in_name(m, tasks) for m in models}
    chosen = [t for t in assigned.values() if t]
    if None in assigned.values() or len(set(chosen)) != len(chosen):
        example = "".join(f"\n      {m}: {assigned[m] or 'TASK'}" for m in models)
        raise RecipeError(
            f"{source}: from_mergekit_config: cannot tell which model of {path} is the expert "
            f"of which task by their names (tasks: {', '.join(tasks)}; matched: {assigned}); "
            f"map them explicitly:\n  from_mergekit_config:\n    path: {path}\n    tasks:" + example
        )
    experts = [ExpertSpec(path=m, task=assigned[m], name=assigned[m]) for m in models]
    return ModelSpec(path=base), experts


def _task_in_name(model: str, tasks: list[str]) -> str | None:
    """The one task whose name is a word of the model's last path part, else None."""
    name = Path(model).name.lower()
    found = [
        t for t in tasks if re.search(rf"(?<![a-z0-9]){re.escape(t.lower())}(?![a-z0-9])", name)
    ]
    return found[0] if len(found) == 1 else None
