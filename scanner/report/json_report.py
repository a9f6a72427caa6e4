"""JSON: the stable machine-readable report (``schema: modelseal/report/v1``)."""

from __future__ import annotations

import json

from scanner.report.model import Report


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
