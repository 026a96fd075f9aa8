"""The evaluators of mergekit-cycleqd, registered through the entry-point group
``mergekit_cycleqd.evaluators`` (see ``pyproject.toml``).

- ``lm_eval_adapter`` / ``lm_eval_prepared``: any lm-eval task on the resident model.
- ``code``: code generation scored by executing tests (MBPP, MBPP+, HumanEval).
- ``agentbench``: AgentBench's DB and OS tasks and its task-server protocol.
- ``isolation``: the sandboxes every piece of untrusted output runs in.
- ``agent_loop``: multi-turn dialogues advanced together, one batched generation a round.
- ``vision``: segmentation IoU; ``weight_probe``: a score read from the weights (tests).

Each module imports only the core's public evaluator API (``mergekit_cycleqd.evaluate``)
and its own package.
"""
