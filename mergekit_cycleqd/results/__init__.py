"""Results: what a run delivers once the search is done.

- ``final``: the aggregated model, baselines and the test-split table.
- ``report``: the HTML/Markdown report with archive maps and plots.
- ``similarity``: the paper's mergeability score between experts.
- ``publish`` / ``hub`` / ``model_card``: choosing models and uploading them to the Hub.
- ``run_models``: any model of a run rebuilt from the run folder (read-only).
"""
