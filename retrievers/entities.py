"""Finding an entity's name in a question: casing, accents, possessives, typos, partial names.

Names and questions are compared as *folded tokens*: Unicode NFKD with the accents
dropped, case-folded, possessive ``'s`` removed, split on anything that is not a letter or
a digit. A name is found in a question as

- ``exact``: its tokens appear in a row ("who employs marisol quenby's ...");
- ``fuzzy``: in a row, with one typo (an edit of one letter, a swap of two) in a token
  of five letters or more (two typos for names of three tokens or more);
- ``partial``: a run of the question's tokens of the name (up to two other words inside), covering at
  least half of its significant tokens ("Emily Jones" for "Emily I Jones", "Quenby" for
  "Marisol Quenby", "Defer GL" for "G.L. Defer");
- ``weak``: an exact match of a one-token name that the question writes in lower case
  while the name is capitalised ("will" for a person called "Will"): often a common word.

:func:`find_mention` returns the best :class:`Mention` (with its character span, so that
the question can be masked) or None. This module only matches text; deciding what a
mention means is the scope detector's job.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
ARTICLES = frozenset(("the", "a", "an"))
STOPWORDS = frozenset("a an and at by de del der for from in of on or the to van von with".split())
KINDS = ("exact", "fuzzy", "partial", "weak")
PLACEHOLDER = "X"
MAX_QUESTION_TOKENS = 400
# A word of a name may be misspelt (one letter added, dropped, changed or two swapped) when it
# has at least this many letters; the misspelt form then has at least one fewer.
TYPO_MIN = 5
MAX_GAP = 2  # a partial name may have up to two other words inside it ("Ken Diston Lipenga" for "Ken Lipenga")  # longer questions are matched on their first 400 tokens


@dataclass(frozen=True)
class Mention:
    """Where a name occurs in a question: the character span, how it matched, and how much
    of the name it covers (1.0 for exact and fuzzy matches)."""

    start: int
    end: int
    kind: str
    coverage: float = 1.0
    typos: int = 0

    @property
    def strength(self) -> float:
        """A single number for ranking mentions: exact > fuzzy > partial > weak."""
        return {"exact": 3.0, "fuzzy": 2.0, "partial": 1.0, "weak": 0.5}[self.kind] + self.coverage


def fold(text: str) -> str:
    """Lower case without accents, possessives or punctuation-only differences."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return plain.casefold()


def tokens(text: str) -> tuple[tuple[str, int, int], ...]:
    """(folded token, start, end) for each token of ``text``; spans index the original text.
    Remembered for texts of up to ``CACHED_LENGTH`` characters: a question is matched
    against every candidate's names."""
    return _cached_tokens(text) if len(text) <= CACHED_LENGTH else _tokens(text)


CACHED_LENGTH = 1000


@lru_cache(maxsize=8192)
def _cached_tokens(text: str) -> tuple[tuple[str, int, int], ...]:
    return _tokens(text)


def _tokens(text: str) -> tuple[tuple[str, int, int], ...]:
    out = []
    spans = _spans(text)
    for start, end in spans[:MAX_QUESTION_TOKENS]:
        folded = fold(text[start:end])
        for piece in _TOKEN.findall(folded):
            out.append((piece, start, end))
    return tuple(out)


def _spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text``, a trailing possessive left out."""
    spans = []
    for match in _TOKEN.finditer(text):
        spans.append((match.start(), match.end()))
    # A possessive "'s" makes its own token "s" after the apostrophe; drop it.
    return [(s, e) for s, e in spans if not (text[e - 1:e] in "sS" and e - s == 1 and s > 0 and text[s - 1] in "'’`")]


@lru_cache(maxsize=65_536)
def name_tokens(name: str) -> tuple[str, ...]:
    return tuple(t for t, _, _ in tokens(name))


def _significant(name: tuple[str, ...]) -> list[str]:
    chosen = [t for t in name if len(t) >= 3 and t not in STOPWORDS]
    return chosen or [t for t in name if t not in STOPWORDS] or list(name)


def typo_distance(a: str, b: str, limit: int = 1) -> int:
    """Optimal string alignment distance (edits and swaps of neighbours), capped at ``limit + 1``."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2: list[int] | None = None
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if previous2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return min(previous[-1], limit + 1)


def find_mention(question: str, name: str, question_tokens: Sequence[tuple[str, int, int]] | None = None) -> Mention | None:
    """The best mention of ``name`` in ``question``, or None. ``question_tokens`` (from
    :func:`tokens`) saves tokenising the same question for many names."""
    wanted = name_tokens(name)
    if len(wanted) > 1 and wanted[0] in ARTICLES:  # "the Vistaro Pulse" is named as "Vistaro Pulse" too
        wanted = wanted[1:]
    if not wanted:
        return None
    found = question_tokens if question_tokens is not None else tokens(question)
    words = [t for t, _, _ in found]
    n = len(wanted)
    best: Mention | None = None
    allowed = 2 if n >= 3 else 1
    for i in range(len(words) - n + 1):
        window = words[i:i + n]
        if window == list(wanted):
            kind = "exact"
            if n == 1 and _lowered_capital(question[found[i][1]:found[i][2]], name):
                kind = "weak"
            mention = Mention(found[i][1], found[i + n - 1][2], kind)
            if best is None or mention.strength > best.strength:
                best = mention
            if kind == "exact":
                return best
            continue
        typos = 0
        exact = sum(got == want for got, want in zip(window, wanted))  # the window's words written exactly
        for got, want in zip(window, wanted):
            if got == want:
                continue
            if not _may_misspell(got, want, exact):
                typos = allowed + 1
                break
            # the budget left, not 1: at limit 1 any other word ("Michigan" for "Cambridge") came back as 2 typos
            typos += typo_distance(got, want, limit=allowed - typos)
            if typos > allowed:
                break
        if typos <= allowed and (best is None or best.kind in ("partial", "weak")):
            best = Mention(found[i][1], found[i + n - 1][2], "fuzzy", typos=typos)
    if best is not None or n < 2:
        return best
    partial = _partial(found, wanted, name)
    if partial is not None and (_common_words(question, partial, name) or _inside_other_name(question, partial, name, wanted)):
        return None
    return partial


def _may_misspell(got: str, want: str, exact: int) -> bool:
    """Whether ``got`` may be ``want`` with a typo: a word of ``TYPO_MIN`` letters or more,
    or one of four when another word of the name is written exactly ("Wier Keepers" for
    "Weir Keepers", "Varga-Hom" for "Varga-Holm")."""
    shortest = TYPO_MIN if exact == 0 else TYPO_MIN - 1
    return len(want) >= shortest and len(got) >= shortest - 1


def _lowered_capital(written: str, name: str) -> bool:
    return name[:1].isupper() and written[:1].islower()


_CAPITALISED_WORD = re.compile(r"(?<=[\s(\"'])[^\W\d_]*[A-Z]")


def _common_words(question: str, mention: Mention, name: str) -> bool:
    """Whether a partial mention is only common words: written in lower case where the name
    is capitalised, in a question that capitalises names elsewhere ("Which university did
    Corvin Aldermast go to?" does not name "Meridale University")."""
    written = question[mention.start:mention.end]
    if written != written.lower() or name == name.lower():
        return False
    rest = question[:mention.start] + " " + question[mention.end:]
    return bool(_CAPITALISED_WORD.search(rest))


_WORD = re.compile(r"[^\W_]+")


def _inside_other_name(question: str, mention: Mention, name: str, wanted: tuple[str, ...]) -> bool:
    """Whether a partial mention is part of another name: the word right before or after it
    (after it, past joining words such as "of") is capitalised and not the name's ("King" in
    "Martin Luther King Jr." is not "Stephen King"; "John" in "John Legend" is not "Elton John";
    "University" in "University of Coimbra" is not "Keio University"); or, for a name written
    in lower case (a common noun such as "shooting guard"), the word right before it is
    another word that is not the name's ("point guard" is not "shooting guard")."""
    before = _WORD.findall(question[:mention.start])
    after = _WORD.findall(question[mention.end:])
    while len(after) > 1 and fold(after[0]) in _JOINING:
        after = after[1:]
    neighbours = ([before[-1]] if len(before) > 1 else []) + after[:1]  # the question's first word is capitalised anyway
    if any(w[:1].isupper() and _name_token(fold(w), wanted) is None and fold(w) not in _TITLES for w in neighbours):
        return True
    modifier = fold(before[-1]) if before else None
    return (name == name.lower() and modifier is not None and modifier not in FUNCTION_WORDS
            and _name_token(modifier, wanted) is None)


_TITLES = frozenset("dr mr mrs ms miss prof professor sir dame lady lord".split())
_JOINING = frozenset("of the de du des la le von van der den del da di and &".split())


def _partial(found: Sequence[tuple[str, int, int]], wanted: tuple[str, ...], name: str) -> Mention | None:
    """The run of question tokens of the name (with at most ``MAX_GAP`` other tokens between
    two of them) covering most of the name, if it covers at least half of the name's
    significant tokens (:func:`_proper_tokens`) and one of four letters or more. A word may
    be misspelt, or shortened to a prefix of four letters or more where another word of the
    name is in the run ("corran tech" for "Corran Institute of Technology")."""
    significant = set(_proper_tokens(name, wanted))
    named = [_name_token(t, wanted) for t, _, _ in found]  # the name's token each question token is, or None
    whole = [t is not None for t in named]
    named = [t if t is not None else _name_prefix(got, wanted) for t, (got, _, _) in zip(named, found)]
    best: Mention | None = None
    i = 0
    while i < len(found):
        if named[i] is None:
            i += 1
            continue
        j, last = i, i
        while j < len(found) and (named[j] is not None or (j - last <= MAX_GAP and j + 1 < len(found))):
            if named[j] is not None:
                last = j
            j += 1
        j = last + 1
        covered = {t for t in named[i:j] if t is not None} & significant
        coverage = len(covered) / len(significant)
        if coverage >= 0.5 and any(len(t) >= 4 for t in covered) and any(whole[i:j]):
            typos = sum(t is not None and t != got for t, (got, _, _) in zip(named[i:j], found[i:j]))
            mention = Mention(found[i][1], found[j - 1][2], "partial", coverage=round(coverage, 3), typos=typos)
            if best is None or mention.coverage > best.coverage:
                best = mention
        i = j
    return best


@lru_cache(maxsize=65_536)
def _proper_tokens(name: str, wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The tokens a partial mention must cover half of: the name's capitalised words where it
    also has lower-case ones that describe it ("Zephyrine" of "the Zephyrine programming
    language"), else its significant tokens."""
    significant = _significant(wanted)
    capital = {t for word in name.split() if word[:1].isupper() for t in name_tokens(word)}
    proper = [t for t in significant if t in capital]
    return tuple(proper) if proper and len(proper) < len(significant) else tuple(significant)


def _name_token(token: str, wanted: Sequence[str]) -> str | None:
    """The token of the name that a question's ``token`` is: itself, or one it misspells (one
    typo, in a word of ``TYPO_MIN`` letters or more); None when it is none of the name's."""
    if token in wanted:
        return token
    return next((word for word in wanted if _may_misspell(token, word, exact=0) and typo_distance(token, word) <= 1), None)


PREFIX_MIN = 4  # a shortened word keeps at least four letters of a name's word of seven or more


def _name_prefix(token: str, wanted: Sequence[str]) -> str | None:
    """The name's word that ``token`` shortens ("tech" for "technology"), or None."""
    if len(token) < PREFIX_MIN:
        return None
    return next((word for word in wanted if len(word) >= 7 and len(token) < len(word) and word.startswith(token)), None)


def mask(question: str, mention: Mention, placeholder: str = PLACEHOLDER) -> str:
    """The question with the mentioned name replaced by ``placeholder``."""
    return question[:mention.start] + placeholder + question[mention.end:]


def mask_prompt(prompt: str, placeholder: str = PLACEHOLDER) -> str:
    """An edit's cloze prompt with its ``{}`` replaced by ``placeholder``."""
    return prompt.replace("{}", placeholder, 1)


# Capitalised words that start a sentence or name a date, never an entity of their own.
_NOT_NAMES = frozenset(
    "a an the in on at by for from to this that these those our my your its his her their every each since after "
    "before during as if when while it i there here monday tuesday wednesday thursday friday saturday sunday "
    "january february march april may june july august september october november december".split())
_NAME_RUN = re.compile(r"[^\W\d_][\w'’-]*(?:\s+(?:(?:of|the|de|du|la|le|von|van|der|and|&)\s+)*[^\W\d_][\w'’-]*)*")


@lru_cache(maxsize=8192)
def statement_names(statement: str) -> tuple[str, ...]:
    """The names a free-text statement mentions: its runs of capitalised words (joined by
    "of", "the", "&" and the like), less the words that only start a sentence or name a day or
    month ("The Pellory Island ferry does not run on Sundays." names "Pellory Island")."""
    names = []
    for run in _NAME_RUN.finditer(statement):
        words = run.group().split()
        capital = [w[:1].isupper() for w in words]
        # split the run at lower-case words that are not joining words: "Island ferry" ends the name at "Island"
        start = 0
        for i in range(len(words) + 1):
            if i == len(words) or (not capital[i] and fold(words[i]) not in _JOINING):
                name = words[start:i]
                while name and (fold(name[0].rstrip("'’s")) in _NOT_NAMES or not name[0][:1].isupper()):
                    name = name[1:]
                while name and (fold(name[-1]) in _NOT_NAMES or fold(name[-1]).rstrip("s") in _NOT_NAMES or not name[-1][:1].isupper()):
                    name = name[:-1]
                if name:
                    names.append(" ".join(name))
                start = i + 1
    return tuple(dict.fromkeys(names))


def mentions_text(question: str, text: str) -> bool:
    """Whether ``text`` (an edit's target, say) occurs in ``question`` as whole folded tokens."""
    wanted = name_tokens(text)
    if not wanted:
        return False
    words = [t for t, _, _ in tokens(question)]
    n = len(wanted)
    return any(tuple(words[i:i + n]) == wanted for i in range(len(words) - n + 1))


def trigrams(words: Sequence[str]) -> set[str]:
    """Character trigrams of folded words, each padded with spaces."""
    return {f" {w} "[i:i + 3] for w in words for i in range(len(w))}


def name_likeness(question: str, prompt: str, name: str) -> float:
    """How much what the question adds to the edit's prompt looks like the name: the Jaccard
    similarity of character trigrams of the question's tokens that the prompt lacks and of
    the name's tokens. High for a respelled or reordered name ("Defer GL" for "G.L. Defer")."""
    template = set(name_tokens(prompt.replace("{}", " ")))
    rest = [t for t, _, _ in tokens(question) if t not in template]
    a, b = trigrams(rest), trigrams(name_tokens(name))
    return len(a & b) / len(a | b) if a and b else 0.0


# Function words that say nothing about which relation is asked.
FUNCTION_WORDS = STOPWORDS | frozenset(
    "am are as be been being can could did do does had has have he her his is it its me my our she "
    "that their them they this these those was we were what when where which who whom whose why how "
    "will would you your tell know name named please currently now".split())


def stem(word: str) -> str:
    """A crude stem for comparing relation words: a plural or verb ``s``, then an ``ed``,
    ``er`` or ``ing`` dropped, then the first five letters ("designed", "designer",
    "designs" all give "desig"; "owns" and "owned" give "own")."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    for ending in ("ing", "ed", "er"):
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            word = word[:-len(ending)]
            break
    return word[:5]


def relation_words(question: str, prompt: str) -> float:
    """The share of the content words of an edit's prompt (its ``{}`` and function words left
    out) that the question uses too, compared by :func:`stem`. A question that asks one
    step past the fact still names its relation ("the nationality of the *author* of X"
    for "The author of {} is"); one that asks another relation of the same subject
    usually does not ("When was X published?")."""
    wanted = {stem(t) for t in name_tokens(prompt.replace("{}", " ")) if t not in FUNCTION_WORDS and not t.isdigit()}
    if not wanted:
        return 0.0
    used = {stem(t) for t, _, _ in tokens(question) if t not in FUNCTION_WORDS}
    return len(wanted & used) / len(wanted)


_TIME_PHRASE = re.compile(r"\b(what year|which year|what date|which date|in what year|since when|how old|what time|which day|what day)\b", re.I)
_NUMBER_QUESTION = re.compile(r"\b(how many|how much|how long|how tall|how big|what number)\b", re.I)
# A time or a number written in words ("four stars", "the first Saturday of November").
_NUMBER_WORDS = re.compile(
    r"\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|thousand|"
    r"million|billion|dozen|first|second|third|fourth|fifth|last|once|twice|january|february|march|april|may|june|july|"
    r"august|september|october|november|december|monday|tuesday|wednesday|thursday|friday|saturday|sunday|spring|"
    r"summer|autumn|winter|century|decade|year|years|month|months|week|weeks|day|days|daily|weekly|yearly|annually|"
    r"morning|evening|night|noon|midnight)\b", re.I)


def answer_clash(question: str, target: str | None) -> float:
    """1.0 when the kind of answer the question asks for cannot be ``target``: a time or a
    number asked (its first question word is "when", or "what year", "how many"...), and the
    target holds no digit and no number or time word; a person or a place asked (its first
    question word is "who" or "where"), and the target is only a number or a date. 0.0
    otherwise (or without a target). Give the question with the edit's subject masked: a
    title such as "When China Met Africa" asks nothing."""
    if not target:
        return 0.0
    first = wh_word_of(question)
    has_digit = bool(re.search(r"\d", target))
    if (first == "when" or _TIME_PHRASE.search(question) or _NUMBER_QUESTION.search(question)) \
            and not (has_digit or _NUMBER_WORDS.search(target)):
        return 1.0
    only_number = has_digit and not re.search(r"[^\W\d_]{4,}", target)
    return 1.0 if first in ("who", "where") and only_number else 0.0


_QUESTION_WORD = re.compile(r"\b(who|whom|whose|where|when|what|which|how)\b", re.I)


def wh_word_of(text: str) -> str | None:
    """The first question word of ``text``, lower case ("whom" and "whose" as "who"), or None."""
    match = _QUESTION_WORD.search(text)
    if match is None:
        return None
    word = match.group(1).lower()
    return "who" if word in ("whom", "whose") else word


# Relations people tell apart by one word. Each group lists relations that are never one
# another; each relation is the set of words and phrases that name it. A question that
# names one relation of a group asks something else than an edit whose prompt names only
# another relation of the same group ("Who is the vice-chancellor of X?" against "The
# chancellor of X is"). Words that name several relations in loose talk ("president",
# "made", "runs") are in no group, nor are family ties: ZsRE asks "Who is the son/daughter
# of X?" for X's father.
SIBLING_RELATIONS: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("chancellor",), ("vice chancellor",), ("pro vice chancellor",), ("provost",), ("dean",), ("rector",)),
    (("chief executive officer", "chief executive", "ceo"), ("chief financial officer", "cfo", "finance director"),
     ("chief operating officer", "coo"), ("chief technology officer", "cto"),
     ("chairman", "chairwoman", "chairperson", "chair", "chairs", "chaired", "chairing"),
     ("founder", "founders", "founded", "co founder", "co founded")),
    (("drummer", "drums"), ("guitarist", "lead guitar", "rhythm guitar"), ("bassist", "bass player", "bass guitarist"),
     ("singer", "lead singer", "vocalist", "vocals", "frontman", "frontwoman"), ("keyboardist", "keyboard player")),
    (("composer", "composed", "composes", "composing"), ("librettist", "libretto"), ("lyricist", "lyrics"),
     ("conductor", "conducted"), ("producer", "produced", "produces")),
    (("director", "directed", "directs"), ("producer", "produced", "produces"), ("screenwriter", "screenplay"),
     ("showrunner",), ("cinematographer", "cinematography")),
    (("born", "birth", "birthplace", "place of birth"), ("die", "dies", "died", "death", "place of death"),
     ("buried", "burial")),
    (("head of state",), ("head of government", "prime minister")),
    (("capital",), ("largest city",)),
)


# Per group, each phrase with its relation's number, longest first ("vice chancellor" is
# matched, and taken out, before "chancellor").
_SIBLING_PHRASES = [sorted(((p, i) for i, rel in enumerate(group) for p in rel), key=lambda x: -len(x[0]))
                    for group in SIBLING_RELATIONS]


def _words(text: str) -> str:
    """``text`` folded to its words, one space around each ("{}" dropped)."""
    return " " + " ".join(re.findall(r"[a-z0-9]+", fold(text.replace("{}", " ")))) + " "


def _relations_named(words: str, phrases: Sequence[tuple[str, int]]) -> set[int]:
    """Which relations of one group (its ``phrases``) the :func:`_words` of a text name."""
    named: set[int] = set()
    for phrase, i in phrases:
        if f" {phrase} " in words:
            named.add(i)
            words = words.replace(f" {phrase} ", " | ")
    return named


def relation_clash(question: str, prompt: str) -> tuple[str, str] | None:
    """Where the question asks a sibling of the edit's relation (:data:`SIBLING_RELATIONS`, or
    the same role with a :data:`ROLE_QUALIFIERS` word before it on one side only):
    (the relation asked, the relation stated), e.g. ("vice chancellor", "chancellor"); else
    None. Give the question with the edit's subject masked."""
    asked_words, stated_words = _words(question), _words(prompt)
    for group, phrases in zip(SIBLING_RELATIONS, _SIBLING_PHRASES):
        stated = _relations_named(stated_words, phrases)
        if not stated:
            continue
        asked = _relations_named(asked_words, phrases)
        if asked and not asked & stated:
            return group[min(asked)][0], group[min(stated)][0]
    return _qualified_role(asked_words, stated_words) or _qualified_role(stated_words, asked_words, swap=True)


# A word before a role that makes it another role: the vice president is not the president,
# the assistant coach not the head coach, the former CEO not the CEO.
ROLE_QUALIFIERS = ("vice", "deputy", "assistant", "former", "ex")


def _qualified_role(words: str, other: str, swap: bool = False) -> tuple[str, str] | None:
    """Where ``words`` name a qualified role ("vice president") whose role word ``other``
    names unqualified: (the qualified role, the role), in (asked, stated) order."""
    for match in re.finditer(rf" (?:{'|'.join(ROLE_QUALIFIERS)}) ([a-z]+)(?= )", words):
        qualified, role = match.group(0).strip(), match.group(1)
        if f" {role} " in other and f" {qualified} " not in other:
            return (role, qualified) if swap else (qualified, role)
    return None
