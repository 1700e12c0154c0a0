"""Restoring parts of a suspect's weights from the reference: the weight-level counterpart of head patching.

A component is the smallest unit a repair restores: one token's input embedding, one query head (its rows of ``q_proj`` and its columns of
``o_proj``: its whole contribution given its keys and values), one key-value group (its rows of ``k_proj`` and
``v_proj``, shared by every query head of the group under grouped-query attention), one layer's MLP, one layer's
norms, or the embeddings with the output head and final norm. Restoring copies the reference's values into the
suspect in place and hands back an undo, so a search can try a component and take it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from scanner.model.sites import Sites


@dataclass(frozen=True, order=True)
class Component:
    kind: str
    """``token`` (one token's input embedding row), ``head`` (a query head and its output columns), ``kv`` (a
    key-value group), ``mlp``, ``norms`` or ``embeddings`` (all of them, the output head and the final norm)."""
    layer: int = -1
    index: int = -1
    """The head or key-value group within the layer; the token id of a ``token``."""

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}H{self.index}"
        if self.kind == "kv":
            return f"L{self.layer}KV{self.index}"
        if self.kind in ("mlp", "norms"):
            return f"L{self.layer} {self.kind}"
        if self.kind == "token":
            return f"token {self.index}"
        return self.kind


Slice = tuple[torch.nn.Parameter, tuple]
"""A parameter and the index of the part of it a component owns."""


def slices(sites: Sites, component: Component) -> list[Slice]:
    """The parameter parts ``component`` owns in the model ``sites`` describes."""
    config = sites.model.config
    head_dim = config.head_dim
    every = (slice(None),)
    if component.kind in ("head", "kv"):
        rows = slice(component.index * head_dim, (component.index + 1) * head_dim)
        names = ("q",) if component.kind == "head" else ("k", "v")
        parts: list[Slice] = []
        for name in names:
            linear = sites.projection(component.layer, name)
            parts.append((linear.weight, (rows,)))
            if linear.bias is not None:
                parts.append((linear.bias, (rows,)))
        if component.kind == "head":
            parts.append((sites.o_proj(component.layer).weight, (slice(None), rows)))
        return parts
    if component.kind == "mlp":
        return [(p, every) for p in sites.mlp(component.layer).parameters()]
    if component.kind == "norms":
        return [(p, every) for norm in sites.layer_norms(component.layer) for p in norm.parameters()]
    if component.kind == "token":
        # The input row only: a fine-tune that taught the model a trigger's meaning wrote it here first.
        return [(sites.embedding().weight, (component.index,))]
    if component.kind == "embeddings":
        modules = (sites.embedding(), sites.unembedding(), sites.final_norm())
        return list({id(p): (p, every) for module in modules for p in module.parameters()}.values())
    raise ValueError(f"unknown component kind {component.kind!r}")


def all_components(sites: Sites) -> Iterator[Component]:
    config = sites.model.config
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    for layer in range(config.num_hidden_layers):
        yield from (Component("head", layer, head) for head in range(config.num_attention_heads))
        yield from (Component("kv", layer, group) for group in range(kv_heads))
        yield Component("mlp", layer)
        yield Component("norms", layer)
    yield Component("embeddings")


@torch.no_grad()
def changed_share(suspect: Sites, reference: Sites, *components: Component) -> float:
    """``||suspect - reference|| / ||reference||`` over the components' parameters together: 0 when the fine-tune
    left them alone."""
    delta = base = 0.0
    for component in components:
        for (mine, index), (theirs, _) in zip(slices(suspect, component), slices(reference, component)):
            delta += float((mine[index].float() - theirs[index].float()).pow(2).sum())
            base += float(theirs[index].float().pow(2).sum())
    return (delta / base) ** 0.5 if base > 0 else float(delta > 0)


def distinct(components: Iterable[Component]) -> list[Component]:
    """``components`` without the token rows the ``embeddings`` among them already hold: what counting parameters or
    measuring change over a set must use, or those rows count twice."""
    components = list(components)
    whole = Component("embeddings") in components
    return [c for c in components if not (whole and c.kind == "token")]


def parameter_count(sites: Sites, component: Component) -> int:
    return sum(parameter[index].numel() for parameter, index in slices(sites, component))


@torch.no_grad()
def restore(suspect: Sites, reference: Sites, component: Component) -> Callable[[], None]:
    """Copy the reference's values of ``component`` into the suspect, in place; returns the undo."""
    saved = []
    for (mine, index), (theirs, _) in zip(slices(suspect, component), slices(reference, component)):
        saved.append((mine, index, mine[index].clone()))
        mine[index] = theirs[index].to(mine.dtype)

    def undo() -> None:
        with torch.no_grad():
            for parameter, index, value in saved:
                parameter[index] = value
    return undo
