"""The graph walk: a multi-hop question answered over the memory's own triples.

The model writes the walk one sub-question at a time, in PokeMQA's line format (our own
worked examples, a ``Key entity:`` line naming the stored subject the question is about)::

    Question: Who is the head of state of the country where the Eiffel Tower stands?
    Key entity: "Eiffel Tower"
    Sub-question: In which country is the Eiffel Tower located?
    Memory fact: "The Eiffel Tower is located in Italy."
    Answer: Italy
    Sub-question: Who is the head of state of Italy?
    Answer: Sergio Mattarella
    Final answer: Sergio Mattarella

The router resolves each sub-question before the model answers it. The shared scope
detector judges the edits about the entity the sub-question names (by name: case,
accents, aliases stored on the edits, small typos); an edit whose subject the
sub-question does not name cannot answer it (so an edit whose *target* is the entity,
the hop just walked, never answers the next hop). An applied triple edit gives the hop's
answer directly, its target, written into the transcript after the quoted fact: the
model never has to copy it. An applied free-text edit is quoted and the model answers.
Otherwise the model answers from what it knows. The model's next sub-question is written
right after that answer, so the walk goes on from the new entity, and when an edit
changes an early hop, later hops follow it (an edit's target is the next edit's subject).
The last hop's answer is the walk's answer. The trace shows the whole walk: entity,
sub-question, edit or model, answer.

Model calls per question: one per hop plus one that ends the walk; a hop the model
answers gets its answer and the next sub-question from the same call (PokeMQA: two calls
per hop and a final line). The prompts are plain text, so the router works on a
black-box chat model too.
"""

from __future__ import annotations

from typing import Any, Sequence

from memedit.memory import Memory
from memedit.models import LanguageModel

from .base import Plan, check_question
from .entities import find_mention, fold
from .multihop import FACT_LINE, FINAL, SUBQUESTION, detect_hop, edit_record, fields, quote_fact
from .pokemqa import PokeMQARouter
from .steps import Steps

STOPS = ("\nAnswer:", "\n" + FACT_LINE.strip(), "\nQuestion:", "\n\n")
_TRAILING = " .;,\"'"


def clean_answer(text: str) -> str:
    """A generated answer as an entity name: the first line, trailing punctuation off."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip(_TRAILING)


def next_line(text: str) -> tuple[str | None, str | None]:
    """(the next sub-question, the final answer) written by a generation; both None when it
    wrote neither (the walk ends with the answer so far)."""
    for name, value in fields(text):
        if name == SUBQUESTION[:-1].casefold():
            return value or None, None
        if name == FINAL[:-1].casefold():
            return None, value
    return None, None


class GraphRouter(PokeMQARouter):
    """Multi-hop answers by walking the memory's triples (see the module docstring).

    The options are PokeMQA's (``detector``, ``k``, ``key_entity``, ``max_hops``, the
    longest walk: it stops there and says so); ``hop_tokens`` bounds each generation.
    """

    name = "graph"

    def __init__(self, model: LanguageModel, memory: Memory, hop_tokens: int = 64, **options: Any) -> None:
        super().__init__(model, memory, hop_tokens=hop_tokens, **options)

    def plan_steps(self, question: str, history: Sequence[dict[str, str]] = ()) -> Steps[Plan]:
        """The walk as a step machine: each generation it needs is yielded. (``history`` is
        not used: each question is walked on its own.)"""
        question = check_question(question)
        entity = self.find_entity(question) if self.key_entity else None
        body = self.start(question, entity)
        trace: list[dict[str, Any]] = [{"step": "chain", "router": self.name, "max_hops": self.max_hops,
                                        "key_entity": entity}]
        hops: list[dict[str, Any]] = []
        used: list[Any] = []
        seen: set[str] = set()
        text = yield from self._generate(body, STOPS)
        subquestion, final = next_line(text)
        if subquestion is None and final is None:
            trace.append({"step": "fallback", "reason": "the model wrote no sub-question: the plain question is the one hop",
                          "text": text})
            subquestion = question
        while subquestion is not None:
            if len(hops) >= self.max_hops:
                trace.append({"step": "stop", "reason": f"max_hops ({self.max_hops}) reached; the answer so far"})
                break
            if fold(subquestion) in seen:
                trace.append({"step": "stop", "reason": f"cycle: {subquestion!r} asked again"})
                break
            seen.add(fold(subquestion))
            edit, detection = detect_hop(self.detector, subquestion, lambda e: names_subject(subquestion, e, self))
            hop = {"n": len(hops) + 1, "entity": hops[-1]["answer"] if hops else entity, "subquestion": subquestion,
                   **detection, "edit": edit_record(edit)}
            if edit is not None and edit.kind == "erase":
                trace.append({"step": "hop", **hop, "source": "edit", "answer": ""})
                trace.append({"step": "refuse", "edit": edit.id, "text": self.refusal})
                return Plan("erase", text=self.refusal, edits_used=[edit], trace=trace)
            body += f"{SUBQUESTION} {subquestion}\n"
            if edit is not None:
                body += quote_fact(edit.statement) + "\n"
                if edit not in used:
                    used.append(edit)
            if edit is not None and edit.target:
                hop.update(source="edit", answer=edit.target)
                body += f"Answer: {edit.target}\n"
                text = yield from self._generate(body, STOPS)
            else:
                body += "Answer:"
                text = yield from self._generate(body, STOPS)
                hop.update(source="fact" if edit is not None else "model", answer=clean_answer(text))
                body += f" {hop['answer']}\n"
                text = text.split("\n", 1)[1] if "\n" in text else ""
            hops.append(hop)
            trace.append({"step": "hop", **hop})
            subquestion, final = next_line(text)
        answer = hops[-1]["answer"] if hops else clean_answer(final or "")
        trace.append({"step": "final", "text": answer, "model_final": final})
        trace.append({"step": "chain_answers", "answers": [h["answer"] for h in hops]})
        trace.append({"step": "transcript", "text": body})
        return Plan(self.name, text=answer, edits_used=used, trace=trace)



def names_subject(subquestion: str, edit: Any, router: GraphRouter) -> bool:
    """Whether an edit can answer ``subquestion``: a free-text edit always (the detector alone
    decides); a triple edit when the sub-question names its subject (the subject, or an alias
    stored on an edit whose target the subject is)."""
    if edit.subject is None:
        return True
    names = [edit.subject, *router.detector.names.names.get(fold(edit.subject), [])]
    return any(find_mention(subquestion, name) for name in names)
