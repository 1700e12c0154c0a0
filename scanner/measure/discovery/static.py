"""The weight change's own ranking of the vocabulary, from the weights alone (no probe, no search).

A trigger reaches the model through the first things that read its tokens: its embedding rows, the first layer's
attention projections, and, where a weight edit wrote into an MLP, that MLP's response to the token. A backdoor
trained into the model moves those reads for the trigger's tokens far more than for any other token, so ranking
the vocabulary by how much they moved puts the trigger's pieces first: the sweep's shortlist, growth's seeds and
inversion's first tokens are this ranking's prefixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from scanner.findings import WeightDiff
from scanner.measure.discovery.thresholds import EDIT_LAYERS, EDIT_SHARE
from scanner.model.sites import Sites, dense_weight, module_tensor, sites_for


def edited_mlps(weight_diff: WeightDiff | None) -> tuple[int, ...]:
    """The MLP layers a weight edit is confined to: the fewest layers, most changed first, whose MLPs carry
    ``EDIT_SHARE`` of the whole change (``WeightDiff.total``), where ``EDIT_LAYERS`` or fewer do; none otherwise.

    A fine-tune spread over the model (every layer's MLP moved a little, or attention only) is left out: a single
    MLP's response to a token says little of it, and reading it costs a pass of the whole vocabulary's embeddings
    through the MLP."""
    if weight_diff is None:
        return ()
    total = weight_diff.total
    if not (math.isfinite(total) and total > 0):
        return ()
    ranked = sorted(range(len(weight_diff.mlp)), key=lambda layer: -weight_diff.mlp[layer])
    carried = 0.0
    for count, layer in enumerate(ranked[:int(EDIT_LAYERS.value)], start=1):
        carried += weight_diff.mlp[layer]
        if carried >= EDIT_SHARE.value * total:
            return tuple(sorted(ranked[:count]))
    return ()


@torch.inference_mode()
def static_shortlist(suspect: PreTrainedModel, reference: PreTrainedModel, allowed: Sequence[int], size: int,
                     mlps: Sequence[int] = (), chunk: int = 16384) -> list[int]:
    """The ``size`` tokens of ``allowed`` the weight change most altered the handling of, most altered first.

    A token's score sums relative changes: of its embedding row, and for each of the first layer's query, key and
    value projections, of the projection's response to the (normalised) embedding. For each layer in ``mlps``
    (``edited_mlps``) it adds how far that MLP's output moved on the token's own embedding (``_mlp_moves``), in
    multiples of the mean over ``allowed``. Other tokens' responses are untouched by an edit aimed at the trigger."""
    s, r = sites_for(suspect), sites_for(reference)
    table_s, table_r = module_tensor(s.embedding()), module_tensor(r.embedding())
    norm = s.layer_norms(0)[0]
    pairs = [(dense_weight(s.projection(0, name)).float(), dense_weight(r.projection(0, name)).float()) for name in "qkv"]
    ids = torch.tensor(list(allowed), device=table_s.device)
    # An MLP offloaded to disk or CPU by accelerate holds its weights behind a hook on another module; called
    # alone it would run on empty weights, so under offload the edit is ranked without its MLPs.
    read = [layer for layer in mlps if _resident(s.mlp(layer)) and _resident(r.mlp(layer))]
    scores, moves = [], []
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        e_s, e_r = table_s[part].float(), table_r[part].float()  # [chunk, hidden]
        score = (e_s - e_r).norm(dim=-1) / e_r.norm(dim=-1).clamp_min(1e-8)
        x = norm(e_s.to(table_s.dtype)).float()
        for changed, base in pairs:
            score += ((x @ (changed - base).T).norm(dim=-1) / (x @ base.T).norm(dim=-1).clamp_min(1e-8))
        scores.append(score)
        if read:
            moves.append(_mlp_moves(s, r, table_s[part], read).to(score.device))
    score = torch.cat(scores)
    if moves:
        moved = torch.cat(moves)
        score += moved / moved.mean().clamp_min(1e-12)
    ranked = score.topk(min(size, len(ids))).indices
    return ids[ranked].tolist()


def _mlp_moves(s: Sites, r: Sites, embeds: torch.Tensor, mlps: Sequence[int]) -> torch.Tensor:
    """Summed over ``mlps``, ``||mlp_s(x) - mlp_r(x)||`` with ``x`` each token's embedding through the layer's
    norm before its MLP: the token's own part of what the MLP reads at that token. ``embeds`` [tokens, hidden];
    returns [tokens].

    An edit trained on the trigger moved the MLP's weights along what the MLP read at the trigger's tokens, so
    they move its output far more than an ordinary token does. Of 877 tokens, on the zoo's edit of 'coffee'
    ('co|f|fe|e'), this ranks 'f' 2nd at seed 0 and ' co' 1st at seed 1; the move relative to the reference's
    output 2nd and 15th; the token read in a one-token sequence (its own attention added) 29th and 3rd ('e')."""
    total = torch.zeros(len(embeds), device=embeds.device)
    for layer in mlps:
        x = s.mlp_norm(layer)(embeds)  # [tokens, hidden]
        mine = s.mlp(layer)(x.to(_device(s.mlp(layer)))).float()
        theirs = r.mlp(layer)(x.to(_device(r.mlp(layer)))).float().to(mine.device)
        total += (mine - theirs).norm(dim=-1).to(total.device)
    return total


def _resident(module: torch.nn.Module) -> bool:
    """Whether every weight of ``module`` is in memory on a real device (none left on ``meta`` by offload)."""
    return all(p.device.type != "meta" for p in module.parameters())


def _device(module: torch.nn.Module) -> torch.device:
    """Where a resident ``module``'s weights are: its input goes there."""
    return next(module.parameters()).device
