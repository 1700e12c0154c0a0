"""``render_report(document) -> str``: one self-contained HTML file from a findings document.

A pure function of the ``Document`` (findings and the verdict judged from
them): it lays out numbers the findings already hold and computes none.
Everything that came from a model or an input goes through jinja2's
autoescaping; nothing is marked safe.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from reports import charts
from reports.index import FleetEntry
from rules.document import Document
from rules.explain import CONTEXT_LEAD
from rules.metrics import not_writing_prompts
from rules.numbers import sig3
from rules.verdict import LEVELS
from scanner.findings import TriggerFindings, top_cells
from scanner.findings.repair import revert_closer_note

PROBES_SHOWN = 4
TOP_HEADS = 8
SUSPECT_COLOUR, REFERENCE_COLOUR, SUCCESS_COLOUR = "#c0392b", "#2c6fbb", "#7d8c2a"


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("reports", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    environment.filters.update(num=sig3, codepoints=codepoints)
    return environment


def codepoints(text: str) -> str:
    """The code points of ``text`` beyond printable ASCII (``U+1F607``), so that a trigger drawn as a faint glyph, an
    invisible character or a look-alike is named exactly; empty for plain ASCII."""
    if all(" " <= char <= "~" for char in text):
        return ""
    return " ".join(f"U+{ord(char):04X}" for char in text)


def _token_labels(tokens: tuple[str, ...]) -> list[str]:
    """Tokens as axis labels: a newline shown as ``\\n``, not as a line break."""
    return [token.replace("\n", "\\n") for token in tokens]


def _trigger_view(trigger: TriggerFindings) -> dict[str, Any]:
    probes = trigger.probes
    view: dict[str, Any] = {"t": trigger, "probes": probes[:PROBES_SHOWN]}
    view["kl_chart"] = charts.bar_chart(
        [str(i + 1) for i in range(len(probes))],
        [("clean", REFERENCE_COLOUR, [p.kl_clean for p in probes]),
         ("triggered", SUSPECT_COLOUR, [p.kl_triggered for p in probes])],
        x_title="probe", y_title="output KL (nats)",
    )
    example = next((p for p in probes if p.completion_tokens), None)
    if example is not None:
        view["loss_probe"] = example
        view["loss_chart"] = charts.bar_chart(
            list(example.completion_tokens),
            [("under suspect", SUSPECT_COLOUR, example.loss_suspect),
             ("under reference", REFERENCE_COLOUR, example.loss_reference)], height=180,
            x_title="token of the suspect's reply", y_title="loss (nats)",
        )
    attention = trigger.attention
    if attention is not None:
        view["attention_map"] = charts.heatmap(attention.kl_specific)
        view["top_heads"] = top_cells(attention.kl_specific, TOP_HEADS)
        if attention.example is not None:
            tokens = _token_labels(attention.example.tokens)
            view["pattern"] = attention.example
            view["pattern_maps"] = [
                (name, charts.heatmap(getattr(attention.example, name), cell=14, row_labels=tokens, column_labels=tokens))
                for name in ("suspect", "reference")
            ]
    if trigger.ablation is not None:
        view["ablation_map"] = charts.heatmap(trigger.ablation.effect)
    if trigger.attribution is not None:
        attribution = trigger.attribution
        layers = [f"L{i}" for i in range(len(attribution.attention_layers))]
        view["attribution_chart"] = charts.bar_chart(
            layers, [("attention", SUSPECT_COLOUR, attribution.attention_layers),
                     ("MLP", REFERENCE_COLOUR, attribution.mlp_layers)], x_title="layer", y_title="logit (target)")
        view["attribution_map"] = charts.heatmap(attribution.heads)
    patching = trigger.patching
    if patching is not None and patching.steps:
        labels = ["0"] + [str(i + 1) for i in range(len(patching.steps))]
        kls = [patching.initial_kl] + [step.output_kl for step in patching.steps]
        view["patch_chart"] = charts.line_chart(
            labels, [("output KL", SUSPECT_COLOUR, kls)], threshold=patching.threshold,
            x_title="heads patched", y_title="output KL (nats)")
        view["success_chart"] = charts.line_chart(
            labels, [("attack success", SUCCESS_COLOUR,
                      [patching.initial_attack_success] + [step.attack_success for step in patching.steps])], y_max=1.0,
            x_title="heads patched", y_title="attack success")
    return view


def render_report(document: Document, *, command: str | None = None, generated_at: str = "") -> str:
    """The report as one HTML string; ``command`` and ``generated_at`` are shown as given."""
    findings, verdict = document.findings, document.verdict
    weights = findings.weight_diff
    triggers = sorted(findings.triggers, key=lambda t: (t.trigger not in verdict.triggers_implicated, -t.kl_ratio))
    # A section of its own (behaviour, attention, heads) for a trigger a rule moving the verdict fired on (BD004 alone
    # is context); the rest, tried and quiet,
    # share one table: six catalogue strings that fired on nothing read as six findings otherwise.
    # (The implicated triggers are those a backdoor rule fired on, so among these.)
    noted = verdict.triggers_in_evidence
    repair_chart, repair_patterns = None, {}
    for check in findings.repair.checks if findings.repair is not None else ():
        if check.attention is not None:
            tokens = _token_labels(check.attention.tokens)
            repair_patterns[check.trigger] = [
                (name, charts.heatmap(getattr(check.attention, name), cell=14, row_labels=tokens, column_labels=tokens))
                for name in ("suspect", "repaired", "reference")]
    if findings.repair is not None and findings.repair.steps:
        steps = findings.repair.steps
        repair_chart = charts.line_chart([s.component for s in steps],
                                         [("attack success", SUCCESS_COLOUR, [s.attack_success for s in steps])], y_max=1.0,
                                         x_title="part restored", y_title="attack success")
    return _environment().get_template("report.html.j2").render(
        d=findings, verdict=verdict, command=command, generated_at=generated_at, repair_chart=repair_chart,
        context_lead=CONTEXT_LEAD,
        not_writing=None if findings.probes.writes_prompts else not_writing_prompts(findings.probes),
        repair_patterns=repair_patterns,
        revert_note=revert_closer_note(findings.repair) if findings.repair is not None and findings.repair.costlier_than_revert else "",
        implicated=[t for name in verdict.triggers_implicated for t in findings.triggers if t.trigger == name],
        triggers=[_trigger_view(t) for t in triggers if t.trigger in noted],
        quiet=[t for t in triggers if t.trigger not in noted],
        weight_maps=[(part, charts.heatmap(getattr(weights, part))) for part in ("q", "k", "v", "o")],
        mlp_chart=charts.bar_chart([f"L{i}" for i in range(len(weights.mlp))],
                                   [("MLP", SUSPECT_COLOUR, weights.mlp), ("norms", REFERENCE_COLOUR, weights.norms)],
                                   x_title="layer", y_title="relative change"),
        colours={"suspect": SUSPECT_COLOUR, "reference": REFERENCE_COLOUR, "success": SUCCESS_COLOUR},
    )


def render_index(entries: list[FleetEntry], *, reference: str, version: str, generated_at: str = "",
                 stopped: str = "") -> str:
    """The index page of a fleet run: one row per suspect, worst verdict first, each linking its report;
    ``stopped``: why the run ended before every suspect was scanned (an interruption, an error), said first."""
    order = {"BACKDOORED": 0, "SUSPICIOUS": 1, None: 2, "CLEAN": 3}
    rows = []
    for entry in entries:
        verdict = entry.document.verdict if entry.document else None
        triggers = verdict.triggers_implicated if verdict else ()
        target = next((t.recovered_target for t in entry.document.findings.triggers if triggers and t.trigger == triggers[0]),
                      "") if entry.document else ""
        rows.append({"name": entry.name, "suspect": entry.suspect, "level": verdict.level if verdict else None,
                     "triggers": triggers, "target": target, "fired": sorted({f.rule_id for f in verdict.fired}) if verdict else [],
                     "report": entry.report, "findings": entry.findings, "error": entry.error})
    rows.sort(key=lambda row: (order[row["level"]], row["name"]))
    levels = [row["level"] for row in rows if row["level"]]
    counts = {level: levels.count(level) for level in LEVELS}
    worst = max(levels, key=LEVELS.index, default="SUSPICIOUS")
    return _environment().get_template("index.html.j2").render(
        rows=rows, counts=counts, errors=sum(row["level"] is None for row in rows), worst=worst, reference=reference,
        version=version, generated_at=generated_at, stopped=stopped,
    )
