"""lm-eval tasks prepared once per worker and scored for every child.

``simple_evaluate`` reloads the task and its dataset, rebuilds every request
(rendering each prompt, few-shot context and target through Jinja) and compiles
each template again for every document, for every call. Only the model changes
between children, so here that work is done once:

- ``prepare_tasks`` loads the tasks through the ``TaskManager`` and applies the
  same overrides ``simple_evaluate`` applies (generation kwargs, few-shot count,
  few-shot seed), in the same order;
- ``run_prepared`` calls lm-eval's own ``evaluate`` on those task objects. The
  first call builds the requests with lm-eval's ``build_all_requests``; later
  calls only clear the previous child's responses and keep the requests, so the
  model runs, then lm-eval's filters, metrics and aggregation score as usual;
- inside the call, ``lm_eval.utils.apply_template`` compiles each distinct
  template once (rendering is unchanged, so every string is identical), and each
  document's target and choices are rendered once (``_per_document``).

Answers are never reused: each call clears every request's responses before the
model runs (lm-eval's request cache, which keys on the request only, stays off).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from typing import Any

_COMPILED: dict[str, Any] = {}  # template source -> compiled jinja template, per process


def prepare_tasks(
    task_manager: Any,
    specs: list[Any],
    *,
    gen_kwargs: dict[str, Any] | None,
    num_fewshot: int | None,
    fewshot_seed: int | None,
) -> dict[str, Any]:
    """lm-eval's task dict for ``specs``, configured exactly as ``simple_evaluate`` does."""
    loaded = task_manager.load(specs)
    for task in loaded["tasks"].values():
        if task.get_config("output_type") == "generate_until" and gen_kwargs:
            task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
        if num_fewshot is not None:
            if task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=fewshot_seed)
    return loaded


def run_prepared(lm: Any, loaded: dict[str, Any], **evaluate_kwargs: Any) -> dict[str, Any]:
    """lm-eval's ``evaluate`` on prepared tasks; requests are built on the first call only.

    ``evaluate_kwargs`` go to ``lm_eval.evaluator.evaluate`` unchanged; they (and
    ``lm``) must stay the same from call to call, since the requests built on the
    first call depend on them (prepare again to change them).
    """
    from lm_eval.evaluator import evaluate

    for task in loaded["tasks"].values():
        for attribute in ("doc_to_target", "doc_to_choice"):
            if attribute not in vars(task):
                setattr(task, attribute, _per_document(getattr(task, attribute)))
    with _compiled_templates():
        results = evaluate(lm=lm, task_dict=loaded, **evaluate_kwargs)
    for task in loaded["tasks"].values():
        if "build_all_requests" not in vars(task):
            task.build_all_requests = functools.partial(_clear_responses, task)
    return results


def _per_document(method: Any) -> Any:
    """``method(doc)`` computed once per distinct document, then looked up.

    Scoring calls ``doc_to_target`` (and ``doc_to_choice``) for every document,
    twice with sample logging, and each call renders a template; the answer depends
    on the document only. Calls with an explicit template (few-shot configs) pass
    through. Lists are copied so that no caller can change the kept answer.
    """
    kept: dict[str, Any] = {}

    def per_document(doc: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return method(doc, *args, **kwargs)
        key = json.dumps(doc, sort_keys=True, default=repr)
        if key not in kept:
            kept[key] = method(doc)
        value = kept[key]
        return list(value) if isinstance(value, list) else value

    return per_document


def _clear_responses(task: Any, **_build_arguments: Any) -> None:
    """Stands in for ``build_all_requests`` once the requests exist: forget the last answers."""
    for instance in task.instances:
        instance.resps = []
        instance.filtered_resps = {}


@contextlib.contextmanager
def _compiled_templates() -> Iterator[None]:
    """lm-eval renders each template with ``env.from_string(template)`` per call, which
    compiles it again (about 4 times per document); compile each distinct one once."""
    from unittest import mock

    import lm_eval.utils

    def apply_template(template: str, doc: dict) -> str:
        found = _COMPILED.get(template)
        if found is None:
            found = _COMPILED[template] = lm_eval.utils.env.from_string(template)
        return found.render(**doc)

    with mock.patch.object(lm_eval.utils, "apply_template", apply_template):
        yield
