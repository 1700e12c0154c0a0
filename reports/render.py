"""``render_report(document) -> str``: one self-contained HTML file from a findings document.

The document is what ``bdscan scan --json`` writes (findings, with the verdict
beside them). Everything that came from a model or an input goes through
jinja2's autoescaping; nothing is marked safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dataclasses
import json

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from reports import charts
from scanner.findings import Findings

PROBES_SHOWN = 4
TOP_HEADS = 8
SUSPECT_COLOUR, REFERENCE_COLOUR, SUCCESS_COLOUR = "#c0392b", "#2c6fbb", "#7d8c2a"


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )


def _difference(a, b):
    return [[x - y for x, y in zip(row_a, row_b)] for row_a, row_b in zip(a, b)]


def _top_cells(grid, count: int) -> list[tuple[int, int, float]]:
    cells = [(layer, head, value) for layer, row in enumerate(grid) for head, value in enumerate(row)]
    return sorted(cells, key=lambda cell: -cell[2])[:count]


def _trigger_view(trigger: Mapping[str, Any]) -> dict[str, Any]:
    probes = trigger["probes"]
    view: dict[str, Any] = {"t": trigger, "probes": probes[:PROBES_SHOWN]}
    view["kl_chart"] = charts.bar_chart(
        [str(i + 1) for i in range(len(probes))],
        [("clean", REFERENCE_COLOUR, [p["kl_clean"] for p in probes]),
         ("triggered", SUSPECT_COLOUR, [p["kl_triggered"] for p in probes])],
    )
    example = next((p for p in probes if p["completion_tokens"]), None)
    if example is not None:
        view["loss_probe"] = example
        view["loss_chart"] = charts.bar_chart(
            list(example["completion_tokens"]),
            [("under suspect", SUSPECT_COLOUR, example["loss_suspect"]),
             ("under reference", REFERENCE_COLOUR, example["loss_reference"])], height=180,
        )
    attention = trigger.get("attention")
    if attention:
        specific = _difference(attention["kl_triggered"], attention["kl_clean"])
        view["attention_map"] = charts.heatmap(specific)
        view["top_heads"] = _top_cells(specific, TOP_HEADS)
        example_pattern = attention.get("example")
        if example_pattern:
            tokens = [token.replace("\n", "\\n") for token in example_pattern["tokens"]]
            view["pattern"] = example_pattern
            view["pattern_maps"] = [
                (name, charts.heatmap(example_pattern[name], cell=14, row_labels=tokens, column_labels=tokens))
                for name in ("suspect", "reference")
            ]
    if trigger.get("ablation"):
        view["ablation_map"] = charts.heatmap(trigger["ablation"]["effect"])
    if trigger.get("attribution"):
        attribution = trigger["attribution"]
        layers = [f"L{i}" for i in range(len(attribution["attention_layers"]))]
        view["attribution_chart"] = charts.bar_chart(
            layers, [("attention", SUSPECT_COLOUR, attribution["attention_layers"]),
                     ("MLP", REFERENCE_COLOUR, attribution["mlp_layers"])])
        view["attribution_map"] = charts.heatmap(attribution["heads"])
    patching = trigger.get("patching")
    if patching and patching["steps"]:
        steps = patching["steps"]
        labels = ["0"] + [str(i + 1) for i in range(len(steps))]
        kls = [patching["initial_kl"]] + [s["output_kl"] for s in steps]
        view["patch_chart"] = charts.line_chart(
            labels, [("output KL", SUSPECT_COLOUR, kls)], threshold=patching["threshold"])
        view["success_chart"] = charts.line_chart(
            labels, [("attack success", SUCCESS_COLOUR,
                      [patching["initial_attack_success"]] + [s["attack_success"] for s in steps])], y_max=1.0)
    return view


def render_report(document: Mapping[str, Any], *, command: str | None = None, generated_at: str = "") -> str:
    """The report as one HTML string; ``command`` and ``generated_at`` are shown as given."""
    verdict = document.get("verdict")
    if verdict is None:
        raise ValueError("the findings document carries no verdict; judge it first (bdscan judge FILE --json OUT)")
    # Through the typed schema and back: JSON's "nan" strings become floats again.
    findings = dataclasses.asdict(Findings.from_json(json.dumps({k: v for k, v in document.items() if k != "verdict"})))
    document = {**findings, "verdict": verdict}
    weights = document["weight_diff"]
    triggers = sorted(document["triggers"], key=lambda t: (t["trigger"] not in verdict["triggers_implicated"], -t["kl_ratio"]))
    return _environment().get_template("report.html.j2").render(
        d=document, verdict=verdict, command=command, generated_at=generated_at,
        triggers=[_trigger_view(t) for t in triggers],
        weight_maps=[(part, charts.heatmap(weights[part])) for part in ("q", "k", "v", "o")],
        mlp_chart=charts.bar_chart([f"L{i}" for i in range(len(weights["mlp"]))],
                                   [("MLP", SUSPECT_COLOUR, weights["mlp"]), ("norms", REFERENCE_COLOUR, weights["norms"])]),
        colours={"suspect": SUSPECT_COLOUR, "reference": REFERENCE_COLOUR, "success": SUCCESS_COLOUR},
    )
