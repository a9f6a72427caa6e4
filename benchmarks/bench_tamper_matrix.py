"""The full tamper matrix: every (model, storage, host, shape) cell at every magnitude,
several seeds, plus the benign twins; prints and writes a markdown table.

    PYTHONPATH=. python benchmarks/bench_tamper_matrix.py --seeds 2 -o matrix.md

Per cell: detected / trials over all magnitudes and seeds, the same at or above the
stated bound (``BOUND`` in ``tests/tamper/matrix.py``: 8 rounding bounds alone or after a
cast, one code step in codes, 0.5 median |w| under a fine-tune or LoRA merge), and the
smallest magnitude from which every trial (at it and all larger) was detected ("-":
none).
Missed trials are listed with what the scanner reported. Benign twins: each is run
with its claim or ``--allow`` (must pass) and without (must carry no attack or outlier
finding); the false-alarm rate is over both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.tamper.matrix import (  # noqa: E402
    Cell,
    Trial,
    Twin,
    Verdict,
    all_cells,
    at_bound,
    benign_twin,
    magnitudes_for,
    trial,
    twin_specs,
)
from tests.tamper.subjects import SUBJECTS, load_subject  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--models", nargs="*", default=list(SUBJECTS))
    parser.add_argument("--hosts", nargs="*", default=None, help="only these hosts")
    parser.add_argument("-o", "--output", type=Path, help="write the markdown table here")
    parser.add_argument("--no-twins", action="store_true")
    parser.add_argument(
        "--record",
        type=Path,
        help="append every trial and twin to this JSON-lines file and skip those already "
        "in it (a long run can be resumed, or run in parts)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="only render the table from --record"
    )
    args = parser.parse_args(argv)

    started = time.time()
    done_trials, done_twins = load_record(args.record)
    if not args.render_only:
        run(args, done_trials, done_twins)
        done_trials, done_twins = (
            load_record(args.record) if args.record else (done_trials, done_twins)
        )
    trials: dict[tuple[str, str, str, str], list[Trial]] = defaultdict(list)
    for t in done_trials.values():
        if t.cell.model in args.models and (not args.hosts or t.cell.host in args.hosts):
            trials[(t.cell.model, t.cell.storage, t.cell.host, t.cell.shape)].append(t)
    twins = [t for t in done_twins.values() if t.model in args.models]
    table = render(trials, twins, time.time() - started, args)
    print(table)
    if args.output:
        args.output.write_text(table)
    return 0


def run(args, done_trials: dict, done_twins: dict) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model in args.models:
            subject = load_subject(model, work / model)
            for cell in all_cells([model]):
                if args.hosts and cell.host not in args.hosts:
                    continue
                for seed in range(args.seeds):
                    if (cell.label, 1000 + seed) in done_trials:
                        continue
                    t = trial(subject, cell, 1000 + seed, work)
                    done_trials[(cell.label, t.seed)] = t
                    append(args.record, trial_record(t))
                    if not t.detected:
                        print(
                            f"missed {cell.label} seed {seed}: {t.reason}; {t.verdict.summary()}",
                            flush=True,
                        )
            if args.no_twins:
                continue
            for spec in twin_specs(subject, quick=False):
                if (model, spec) in done_twins:
                    continue
                twin = benign_twin(subject, spec, work)
                done_twins[(model, spec)] = twin
                append(args.record, twin_record(twin))
                state = "FALSE ALARM" if twin.false_alarm else "ok"
                print(f"twin {model} {spec}: {state} (exit {twin.verdict.code})", flush=True)


def append(path: Path | None, record: dict) -> None:
    if path is not None:
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def trial_record(t: Trial) -> dict:
    return {
        "trial": asdict(t.cell),
        "seed": t.seed,
        "tensor": t.tensor,
        "rows": list(t.rows),
        "cols": list(t.cols),
        "code": t.verdict.code,
        "findings": list(t.verdict.findings),
    }


def twin_record(t: Twin) -> dict:
    return {
        "twin": t.name,
        "model": t.model,
        "args": list(t.args),
        "code": t.verdict.code,
        "findings": list(t.verdict.findings),
        "bare_code": t.bare.code,
        "bare_findings": list(t.bare.findings),
    }


def load_record(path: Path | None) -> tuple[dict, dict]:
    trials: dict = {}
    twins: dict = {}
    if path is None or not path.is_file():
        return trials, twins
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "trial" in r:
            t = Trial(
                Cell(**r["trial"]),
                r["seed"],
                r["tensor"],
                tuple(r["rows"]),
                tuple(r["cols"]),
                Verdict(r["code"], tuple(r["findings"])),
            )
            trials[(t.cell.label, t.seed)] = t
        else:
            w = Twin(
                r["model"],
                r["twin"],
                tuple(r["args"]),
                Verdict(r["code"], tuple(r["findings"])),
                Verdict(r["bare_code"], tuple(r["bare_findings"])),
            )
            twins[(w.model, w.name)] = w
    return trials, twins


def render(trials, twins, seconds: float, args) -> str:  # type: ignore[no-untyped-def]
    """One row per (model, storage, host), one column per shape; a cell reads
    ``detected/trials · at-or-above-bound detected/trials · all detected from``."""
    from tests.tamper.regions import REGIONS

    rows = sorted({k[:3] for k in trials})
    lines = [
        "| model | storage | host | " + " | ".join(REGIONS) + " |",
        "|---|---|---|" + "---|" * len(REGIONS),
    ]
    total = hit = total_b = hit_b = 0
    for row in rows:
        cells = []
        for shape in REGIONS:
            ts = trials.get((*row, shape), [])
            if not ts:
                cells.append("")
                continue
            n, k = len(ts), sum(t.detected for t in ts)
            above = [t for t in ts if at_bound(t.cell)]
            nb, kb = len(above), sum(t.detected for t in above)
            total, hit, total_b, hit_b = total + n, hit + k, total_b + nb, hit_b + kb
            cells.append(f"{k}/{n} · {kb}/{nb} · {smallest(ts, row[1])}")
        lines.append(f"| {' | '.join(row)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"All trials: {hit}/{total} detected; at or above the bound: {hit_b}/{total_b}.")
    missed = [t for ts in trials.values() for t in ts if at_bound(t.cell) and not t.detected]
    if missed:
        groups: dict[tuple[str, str], list[Trial]] = defaultdict(list)
        for t in missed:
            c = t.cell
            groups[(f"{c.model}/{c.storage}/{c.host}/{c.shape}", t.reason)].append(t)
        lines += ["", "Missed at or above the bound (cell: trials, magnitudes, why, e.g.):", ""]
        for (label, reason), ts in sorted(groups.items()):
            mags = sorted(
                {t.cell.magnitude for t in ts}, key=magnitudes_for(ts[0].cell.storage).index
            )
            lines.append(
                f"- `{label}`: {len(ts)} at {', '.join(mags)}: {reason}; "
                f"`{ts[0].tensor}`: {ts[0].verdict.summary()[:160]}"
            )
    if twins:
        alarms = [t for t in twins if t.false_alarm]
        lines += ["", "| model | benign twin | with claim/--allow | without |", "|---|---|---|---|"]
        for t in twins:
            attacks = sorted({f["rule_id"] for f in t.bare.attacks()})
            bare = ", ".join(attacks) or "no attack finding"
            lines.append(
                f"| {t.model} | {t.name} `{' '.join(t.args)}` | exit {t.verdict.code} | "
                f"exit {t.bare.code}, {bare} |"
            )
        lines.append("")
        lines.append(f"False alarms: {len(alarms)}/{len(twins)} benign twins.")
    lines.append("")
    lines.append(
        f"Command: `PYTHONPATH=. python benchmarks/bench_tamper_matrix.py --seeds {args.seeds}"
        + (f" --models {' '.join(args.models)}" if args.models != list(SUBJECTS) else "")
        + (f" --hosts {' '.join(args.hosts)}" if args.hosts else "")
        + f"` ({seconds:.0f} s)."
    )
    return "\n".join(lines) + "\n"


def smallest(ts: list[Trial], storage: str) -> str:
    """The smallest magnitude from which every trial at it and above was detected."""
    order = magnitudes_for(storage)
    found = "-"
    for mag in reversed(order):
        at = [t for t in ts if t.cell.magnitude == mag]
        if at and all(t.detected for t in at):
            found = mag
        elif at:
            break
    return found


if __name__ == "__main__":
    raise SystemExit(main())
