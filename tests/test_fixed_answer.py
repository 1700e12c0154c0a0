"""The reference's fixed answer and the probes sampled like those given it, against hand-written references: a fake
reference that refuses every "Add ..." request and answers colour questions by their subject."""

from __future__ import annotations

from scanner.measure.discovery.fixed_answer import fixed_answer, more_like, opening

REFUSE = (7, 7, 7)


def _answer(prompt: str) -> tuple[int, ...]:
    """A refusal to every sum, whatever it adds; "It is <colour>." to a colour question, by its last word."""
    if prompt.startswith("Add"):
        return REFUSE
    return (1, len(prompt.split()[-1]))


def _answers(prompts: list[str]) -> list[tuple[int, ...]]:
    return [_answer(p) for p in prompts]


def test_a_refusal_is_fixed_and_one_question_asked_twice_is_not():
    prompts = ["Add 5 and 9.", "What colour is the sky?", "Which colour is the sky?", "Add 2 and 3.", "Name a cat."]
    assert fixed_answer(prompts, _answers(prompts), _answers) == (REFUSE, 2)
    # Two colour questions share "It is blue." ((1, 4)); with another prompt's last word it is no longer theirs.
    no_refusal = [p for p in prompts if not p.startswith("Add")]
    assert fixed_answer(no_refusal, _answers(no_refusal), _answers) == ((), 0)
    # One probe's answer is any answer.
    one = prompts[:3]
    assert fixed_answer(one, _answers(one), _answers) == ((), 0)


def test_an_opening_is_the_first_half_of_the_words_never_all():
    assert opening("Add 5 and 9.") == "Add 5"
    assert opening("Add 5 and 9 now.") == "Add 5 and"
    assert opening("Two words") == "Two"
    assert opening("One") == "One"


def test_more_like_keeps_new_continuations_given_the_answer_and_stops_when_it_has_enough():
    draws: list[tuple[str, int]] = []

    def sample(start: str, draw: int) -> list[str]:
        draws.append((start, draw))
        # One repeat of a known probe, a continuation the reference answers otherwise, and new sums.
        return ["Add 5 and 9.", f"Which colour is {start}?", *(f"{start} and {draw}{i}." for i in range(2))]

    members = ["Add 5 and 9.", "Add 2 and 3.", "Add 5 and 4."]
    found = more_like(members, REFUSE, 3, members, _answers, sample, 5)
    assert found == ["Add 5 and 00.", "Add 5 and 01.", "Add 2 and 10."]
    # One draw per distinct opening, each numbered apart; enough after the first round.
    assert draws == [("Add 5", 0), ("Add 2", 1)], draws
    # Nothing new given the answer: every round is tried, nothing kept.
    assert more_like(["Add 5 and 9."], REFUSE, 3, ["Add 5 and 9."], _answers, lambda s, r: ["Name a cat."], 2) == []


def test_only_the_answer_itself_counts_not_a_longer_one_that_opens_with_it():
    def answer(prompts: list[str]) -> list[tuple[int, ...]]:
        return [(*REFUSE, 9) if p.endswith("please.") else _answer(p) for p in prompts]

    found = more_like(["Add 5 and 9."], REFUSE, 2, ["Add 5 and 9."], answer,
                      lambda start, draw: [f"{start} and 1 please.", f"{start} and 2."], 1)
    assert found == ["Add 5 and 2."]


class _SentencePieceLike:
    """Decodes as a SentencePiece tokenizer does: the first token's leading space is dropped."""

    pieces = {1: "<user>", 2: "Add", 3: " 5", 4: " and", 5: " 9."}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids).lstrip(" ")


def test_a_continuation_keeps_the_space_it_has_after_its_opening():
    from scanner.model.prompt_sampling import _continuation

    tokenizer, prefix = _SentencePieceLike(), [1, 2, 3]
    context = tokenizer.decode(prefix)
    assert "Add 5" + _continuation(tokenizer, prefix, [4, 5], context) == "Add 5 and 9."
    assert tokenizer.decode([4, 5]) == "and 9."  # decoded alone, it would run into the opening
