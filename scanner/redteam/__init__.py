"""Attack planting for red-team tests and the ``modelseal redteam`` command."""
