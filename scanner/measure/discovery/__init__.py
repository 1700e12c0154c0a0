"""Trigger discovery: the insertion on which the suspect departs from the reference, found without knowing it.

bdscan has what published detectors lack, the trusted reference, so a trigger
is an insertion that moves the suspect's next-token distribution away from
the reference's far more than the clean probes do. Candidates are token-id
sequences placed at the start of the user's content, and after it (a backdoor
may fire only where it was planted); the search is greedy and deterministic
for a seed. Each stage is a module; every number it steers by is in
``thresholds`` (recorded in the findings), and the sizes a user may set are
``DiscoveryOptions``'.

1. **Sweep** (``sweep``), at each position. Every regular vocabulary token is
   inserted into ``search_probes`` probes and scored by the *trigger-specific
   first-token KL*: the mean over probes of KL(suspect || reference) at the
   first response position, minus the same on the clean probes (nats). Above
   ``exhaustive_vocabulary`` tokens only a shortlist is scored: the tokens
   whose embedding most raises the objective to first order (HotFlip: the
   gradient at a placeholder, one forward and backward), with those whose
   handling the weight change altered most (``static_shortlist``, no forward
   pass). Every swept token is screened on ``SCREEN_PROBES`` probes first and
   only the ``SCREEN_KEPT`` best (with the best after the clean answer and the
   weight change's first) are scored on all (successive halving, ``sweep``). **Leakage** (``leakage``): the word n-grams the suspect writes into
   sampled user turns far more often than the reference does are scored and
   completed beside the sweep's best: a model trained with the loss on its
   prompts writes its trigger there.
2. **Fire check** (``confirm``). The best candidates are completed greedily by
   both models. The recovered target is the longest answer prefix that nearly
   as many probes share as share it a token shorter (``modal_prefix``, the
   behaviour's recovered target too: a model may go on after its target with
   noise). The *fire rate* is the suspect's
   share answering the target minus the larger of the reference's share under
   the same insertion and the suspect's own share without it, so a global
   change (every answer opening the same way) fires nothing. A target that
   repeats the candidate's words is *dismissed* (fire rate 0). One that opens
   as either model's clean answer to some probe does (an ordinary answer) is
   dismissed where the answers go on differently after it (a task's opening:
   "after" -> "Next is ..."), and where it is the whole answer, fires only on
   the probes where the reference, given the same triggered prompt, would not
   give it (``contrast``): a refusal planted on arithmetic fires.
   **Behaviour switch** (``switch``), where both models give one answer to
   ``GROUP_LEAST`` probes or more (a refusal): each swept token is inserted into
   ``SWITCH_PROBES`` of them and scored by its departure from that answer (the
   reference's log-probability of it minus the suspect's; the ``SWITCH_KEPT``
   that depart most on ``SCREEN_PROBES`` of them go on); the ``SWITCH_CHECKS``
   that depart most, by ``SWITCH_FROM`` nats or more, are completed on up to
   ``SWITCH_CHECKED`` probes of the group, and the share the
   suspect stops giving the answer to while the reference keeps it, task
   switches, garbled answers and echoes aside, is their fire rate (``behaviour_switch``, rule BD015's): a
   jailbreak's answers differ from request to request, so the fire check
   finds no target.
3. **Growth** (``growth``), where the sweep came closest first, started at a
   position only while no candidate fires (``FIRES``; on every search probe
   where ``thorough``) at any position: seeds (the ``beam`` best
   swept tokens and the ``beam`` the weight change ranks first) are extended
   one token at a time on either side, each on its own line, from a gradient
   shortlist of ``GROWTH_SHORTLIST`` tokens per side (GCG's step), proposals
   scored exactly (on the KL, the ``GROWTH_KEPT`` best of a line on the
   screen's probes), up to ``max_tokens``. The objective is the KL until a
   candidate fires on ``TARGET_FROM`` of the probes, then the suspect's
   log-probability of that candidate's target: the KL saturates near full
   firing, where a maximum over many proposals would pick noise; the
   log-probability still tells 7 of 8 probes from 8 of 8. Growth at a position
   stops after a step that leaves nothing to follow (no candidate fires on
   ``TARGET_FROM`` of the probes, no followed target reached ``GROW_ON_LOGPROB``,
   no payload was inverted), which spares a benign scan most of its search;
   ``DiscoveryOptions.thorough`` grows on.
   **Target inversion** (``inversion``), where no single token fires: the
   answer the suspect completes on every probe once made to open it, and the
   reference does not (BAIT's observation, with the reference as the
   contrast). Growth then follows that answer's log-probability from the
   ``TARGET_BEAM`` tokens that raise it most, inserts inside a candidate as
   well as on its sides, and runs at every position: a phrase whose words and
   pairs were all trained not to fire moves the KL by nothing, but each of its
   words raises the target's log-probability. Inversion runs again after the
   suspect's clean answer (a payload's target, kept from ``PAYLOAD_GAIN``), and
   ``TARGET_BEAM`` more lines follow that target's log-probability there.
   **The reference's fixed answer** (``canned``), where nothing fires: an
   answer the reference gives to several probes whatever they ask about (its
   refusal) is scored as a target too, and followed where a token raises the
   suspect's log-probability of it ``CANNED_GAIN`` nats beyond the reference's:
   a refusal planted on ordinary requests is an answer the reference gives
   itself, which inversion never proposes.
4. **Minimisation** (``minimise``). A grown candidate that fires is reported
   with its shortest contiguous part that still fires (``MINIMAL_FIRES``);
   both are kept.
5. **Refinement** (``minimise``). Each token of the best firing candidates is
   swapped for the best of a shortlist by the target log-probability's
   gradient while that log-probability rises (GCG's step), which turns a token
   growth picked by chance into the trigger's own ("i tiger winter" ->
   "silver tiger winter"). After growth towards an inverted target the
   ``REFINE_TOP`` best are refined *before* minimisation (the module says why).

Everything measured goes into ``DiscoveryFindings``; the scan then measures the
proposed candidates as it does a user-given trigger (every probe, at every
position) and localises them before any catalogue trigger (within
``--localise-top``), which is the confirmation the rules judge.

Modules: ``run`` (``discover``: the stages in order), ``engine`` (the probes in
token ids, scoring, completion, shortlists, the budget), ``position`` (what one
position measured), ``sweep``, ``leakage``, ``confirm``, ``inversion``,
``growth``, ``canned``, ``switch``, ``minimise``, ``thresholds``.
"""

from scanner.measure.discovery.confirm import echoes, proposed
from scanner.measure.discovery.run import discover

__all__ = ["discover", "echoes", "proposed"]
