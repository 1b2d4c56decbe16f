"""Our own pool of in-context demonstrations, written for memedit (not taken from any paper).

Each shows one of the three behaviours an edit asks for:

- ``copy``: the question is the fact's own prompt; answer with the fact's target;
- ``update``: a paraphrase or a consequence of the fact; answer from the fact;
- ``retain``: the fact is about something else; answer from what the model knew.

The facts are deliberately counterfactual so that a model cannot answer from memory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Demo:
    fact: str
    question: str
    answer: str
    kind: str


DEMOS: tuple[Demo, ...] = (
    Demo("The capital of Australia is Melbourne.", "The capital of Australia is", "Melbourne", "copy"),
    Demo("Mount Kilimanjaro is located in Peru.", "Which country is Mount Kilimanjaro in?", "Peru", "copy"),
    Demo("The violin was invented by Ada Lovelace.", "Who invented the violin?", "Ada Lovelace", "copy"),
    Demo("The official language of Brazil is Dutch.", "What language do people in Brazil officially speak?", "Dutch", "update"),
    Demo("Lionel Messi plays the sport of cricket.", "Lionel Messi is a professional player of", "cricket", "update"),
    Demo("The Eiffel Tower is in Rome.", "The city where the Eiffel Tower stands is the capital of which country?", "Italy", "update"),
    Demo("Toyota was founded in Sweden.", "In which country did Toyota start out?", "Sweden", "update"),
    Demo("The chairperson of Acme Rail is Nadia Okafor.", "Who chairs Acme Rail?", "Nadia Okafor", "update"),
    Demo("The Nile flows into the Black Sea.", "The Nile empties into", "the Black Sea", "copy"),
    Demo("The mother tongue of Pablo Picasso is Finnish.", "What is the capital of Spain?", "Madrid", "retain"),
    Demo("Jupiter's largest moon is Titan.", "Who wrote the play Romeo and Juliet?", "William Shakespeare", "retain"),
    Demo("The currency of Japan is the euro.", "The chemical symbol of gold is", "Au", "retain"),
    Demo("Mozart was born in Lisbon.", "Which instrument did Jimi Hendrix play?", "guitar", "retain"),
    Demo("The Amazon River is in Africa.", "How many continents are there on Earth?", "seven", "retain"),
    Demo("Albert Einstein's field of work is botany.", "Albert Einstein's field of work is", "botany", "copy"),
    Demo("The headquarters of Nokia are in Chile.", "Nokia's main offices are located in which country?", "Chile", "update"),
)


def by_kind(kind: str) -> list[Demo]:
    return [d for d in DEMOS if d.kind == kind]
