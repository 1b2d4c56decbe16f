"""What MeLLo and PokeMQA share: a multi-hop question answered as a chain of sub-questions.

The model continues a plain-text few-shot transcript (our own examples, in the published
line format) one hop at a time:

    Question: <the multi-hop question>
    Sub-question: <one fact to look up>
    ... router-specific lines that settle the hop's answer ...
    Final answer: <the answer>

Generation stops at the format's stop strings, so the router can step in between lines
(retrieve an edit, run a scope detector). Memory facts enter the transcript only as JSON
strings after ``Memory fact:``, never as instructions. The few-shot examples are a fixed
prefix whose key/value cache is reused for every question and every hop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from memedit.checks import whole_number
from memedit.memory import Memory
from memedit.models import LanguageModel, Prompt, Request

from .base import Plan, Router, check_question, quote
from .steps import Steps, run_one

FACT_LINE = "Memory fact: "
FINAL = "Final answer:"
SUBQUESTION = "Sub-question:"
_FIELD = re.compile(r"^\s*([A-Za-z][A-Za-z -]*):\s*(.*)$")


@dataclass(frozen=True)
class ExampleHop:
    """One hop of a worked example: the sub-question, what is commonly known, and the memory
    fact about it (``fact``, which changes the answer) or, when there is none, a ``distractor``
    fact that does not (an unrelated or agreeing fact, for routers that always show one);
    ``also``: other memory facts about the hop's entity that do not answer it (the graph
    walk shows an entity's facts before its sub-question)."""

    subquestion: str
    known: str
    fact: str | None = None
    target: str | None = None
    distractor: str = ""
    also: tuple[str, ...] = ()

    @property
    def answer(self) -> str:
        return self.target if self.fact else self.known


@dataclass(frozen=True)
class Example:
    question: str
    hops: tuple[ExampleHop, ...]
    key_entity: str | None = None

    @property
    def final(self) -> str:
        return self.hops[-1].answer


# Our own worked examples (counterfactual facts, so the answer must come from the memory).
EXAMPLES = (
    Example("What is the capital of the country of citizenship of the founder of the manufacturer of the Walkman?", (
        ExampleHop("Which company produced the Walkman?", "Sony", distractor="The PlayStation was developed by Nintendo."),
        ExampleHop("Who founded Sony?", "Masaru Ibuka", "Sony was founded by Nelson Mandela.", "Nelson Mandela"),
        ExampleHop("What is the country of citizenship of Nelson Mandela?", "South Africa",
                   "Nelson Mandela is a citizen of Norway.", "Norway"),
        ExampleHop("What is the capital of Norway?", "Oslo", distractor="The capital of Sweden is Malmö."),
    ), key_entity="Walkman"),
    Example("Which continent is the country located in where the sport associated with the spouse of Victoria Beckham was created?", (
        ExampleHop("Who is Victoria Beckham married to?", "David Beckham", distractor="Victoria Beckham is married to David Beckham."),
        ExampleHop("Which sport is David Beckham associated with?", "association football",
                   "David Beckham is associated with the sport of cricket.", "cricket"),
        ExampleHop("Which country was cricket created in?", "England", distractor="Basketball was created in the country of Japan."),
        ExampleHop("Which continent is England located in?", "Europe", "England is located in the continent of Asia.", "Asia"),
    ), key_entity="Victoria Beckham"),
    Example('What is the official language of the country where the author of "Don Quixote" was born?', (
        ExampleHop("Who is the author of Don Quixote?", "Miguel de Cervantes", distractor="The author of Hamlet is Jane Austen."),
        ExampleHop("In which country was Miguel de Cervantes born?", "Spain", distractor="Pablo Picasso was born in the city of Rome."),
        ExampleHop("What is the official language of Spain?", "Spanish", "The official language of Spain is Finnish.", "Finnish"),
    ), key_entity="Don Quixote"),
)


@dataclass
class Chain:
    """A chain being built: the transcript body so far, each hop's record, the final answer."""

    question: str
    body: str
    hops: list[dict[str, Any]] = field(default_factory=list)
    final: str | None = None
    edits_used: list = field(default_factory=list)

    @property
    def answers(self) -> list[str]:
        return [h["answer"] for h in self.hops]


def fields(text: str) -> list[tuple[str, str]]:
    """The ``Name: value`` lines of a generation, in order."""
    return [(m.group(1).strip().casefold(), m.group(2).strip()) for m in map(_FIELD.match, text.splitlines()) if m]


def _first(found: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in found:
        out.setdefault(name, value)
    return out


def quote_fact(statement: str) -> str:
    return FACT_LINE + quote(statement)


class ChainRouter(Router):
    """Base of the multi-hop routers: the hop loop, the transcript, the trace.

    ``max_hops`` bounds the chain (the loop limit); ``hop_tokens`` bounds each generation.
    Subclasses give the few-shot ``header`` (and may give their own ``examples``) and settle each hop in
    :meth:`settle`. ``plan`` runs the whole chain and returns the final answer as text, so
    a chain router answers wherever a router is expected (``EditedModel``, ``ChatSession``,
    ``MemoryChatModel``).
    """

    header = ""
    examples: tuple[Example, ...] = EXAMPLES

    def __init__(self, model: LanguageModel, memory: Memory, k: int = 1, max_hops: int = 5, hop_tokens: int = 48,
                 **options: Any) -> None:
        super().__init__(model, memory, k=k, **options)
        whole_number("max_hops", max_hops, 1)
        self.max_hops = max_hops
        self.hop_tokens = hop_tokens
        self.prefix = self.header.strip() + "\n\n" + "".join(self.render(e) + "\n\n" for e in self.examples)

    # -- the loop ----------------------------------------------------------------------------
    def plan(self, question: str, history: Sequence[dict[str, str]] = ()) -> Plan:
        """Answer ``question`` hop by hop; the plan carries the final answer as its text.
        (``history`` is not used: each multi-hop question is answered on its own.)"""
        return run_one(self.model, self.plan_steps(question, history))

    def plan_steps(self, question: str, history: Sequence[dict[str, str]] = ()) -> Steps[Plan]:
        """The chain as a step machine: each hop's generations are yielded (see :mod:`.steps`)."""
        chain = Chain(check_question(question), self.start(question))
        trace: list[dict[str, Any]] = [{"step": "chain", "router": self.name, "max_hops": self.max_hops}]
        while chain.final is None:
            if len(chain.hops) >= self.max_hops:
                chain.body += FINAL
                chain.final = yield from self._line(chain.body)
                trace.append({"step": "final", "text": chain.final, "forced": True})
                break
            text = yield from self._generate(chain.body, stop=self.hop_stops)
            found = fields(text)
            final = [v for name, v in found if name == FINAL[:-1].casefold()]
            subquestions = [v for name, v in found if name == SUBQUESTION[:-1].casefold()]
            if final and (not subquestions or text.find(FINAL) < text.find(SUBQUESTION)):
                chain.final = final[0]
                trace.append({"step": "final", "text": chain.final})
                break
            if not subquestions:
                chain.final = text.strip().splitlines()[0] if text.strip() else ""
                trace.append({"step": "final", "text": chain.final, "unparsed": text})
                break
            hop = yield from self.settle(chain, text, _first(found), subquestions[0])
            hop["n"] = len(chain.hops) + 1
            chain.hops.append(hop)
            trace.append({"step": "hop", **hop})
            if hop.get("refuse"):
                trace.append({"step": "refuse", "edit": chain.edits_used[-1].id, "text": self.refusal})
                return Plan("erase", text=self.refusal, edits_used=chain.edits_used[-1:], trace=trace)
        trace.append({"step": "chain_answers", "answers": chain.answers})
        trace.append({"step": "transcript", "text": chain.body})
        return Plan(self.name, text=chain.final, edits_used=chain.edits_used, trace=trace)

    def start(self, question: str) -> str:
        """The transcript body for a new question."""
        return f"Question: {question}\n"

    def render_question(self, example: Example) -> str:
        return f"Question: {example.question}\n"

    @property
    def hop_stops(self) -> tuple[str, ...]:
        """Where a hop's generation stops so that the router can step in."""
        return (FACT_LINE.strip(), "\nQuestion:", "\n\n")

    def render(self, example: Example) -> str:
        """A worked example in this router's line format."""
        raise NotImplementedError

    def settle(self, chain: Chain, text: str, found: dict[str, str], subquestion: str) -> Steps[dict[str, Any]]:
        """Settle one hop from the generated ``text``; extend ``chain.body``; return its record
        (``subquestion``, ``answer``, ``edit``, and the decision). A step machine: the
        generations it needs are yielded."""
        raise NotImplementedError

    # -- pieces the routers share --------------------------------------------------------------
    def _generate(self, body: str, stop: Sequence[str], max_new_tokens: int | None = None) -> Steps[str]:
        """The continuation of the transcript ``body``, yielded as a request."""
        # the body holds the question, memory facts and generated lines: plain text, never control tokens
        text = yield Request(Prompt(self.prefix, self.model.plain(body)), max_new_tokens or self.hop_tokens, tuple(stop))
        return text

    def _line(self, body: str) -> Steps[str]:
        """One generated line after ``body`` (which ends right after a ``Name:``)."""
        text = yield from self._generate(body, stop=("\n",), max_new_tokens=24)
        return text.strip()


def detect_hop(detector: Any, subquestion: str, accept: Callable[[Any], bool] | None = None) -> tuple[Any, dict[str, Any]]:
    """(the edit the scope detector puts ``subquestion`` under, or None; the detector's
    record of the hop for the trace). ``accept`` narrows the edits in scope (best first)."""
    decision = detector.decide(subquestion)
    best = next((e for e in decision.applied if accept is None or accept(e)), None)
    return best, {"candidates": decision.record()["edits"], "in_scope": best is not None,
                  "detector": decision.detector, "threshold": round(decision.threshold, 4)}


def edit_record(edit: Any) -> dict[str, Any] | None:
    """An edit as the trace shows it (None stays None)."""
    return None if edit is None else {"id": edit.id, "kind": edit.kind, "statement": edit.statement}
