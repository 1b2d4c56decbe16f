"""Training the scope classifiers: the cross-encoder of :mod:`.scope` (``train_cross_encoder``)
and the scope detector's head (``train``, ``memedit scope train``): data, fit, calibration, files.

The cross-encoder is fine-tuned from the packaged MiniLM on labelled pairs (see
:mod:`.scope_pairs`). For the detector's head:

The pairs come from KnowEdit cases 200-799 of ZsRE and WikiData_counterfact (cases 0-199
are the evaluation slice and are never read here; MQuAKE never is): an edit's own prompt,
its rephrasing (ZsRE's are questions) and its portability prompts are in scope; its
locality prompts (the same subject, another relation), the same relation about another
subject and random other prompts are out (:func:`memedit.retrievers.scope.scope_pairs`).
Then question-shaped pairs from our hand-written relation templates
(``data/relation_templates.json``: how people ask for 185 relations, about invented
entities), each question against the edit of its relation and against edits of other
relations of the same entity, and compound questions built from them ("Where was the CEO of
X born?": in scope of the first hop's edit, ``compound_pairs``). Each pair whose question names the subject also appears in
a user's forms of typing it: lower case, one typo in the name, only part of the name.
Then people's questions of ``data/scope_questions.jsonl`` (``question_pairs``), and
``--extra FILE`` adds the user's own labelled questions (the same JSONL format, that of
``memedit scope eval``).

The head is fitted on 90 % of the statements; its threshold is the middle of the F1
plateau on the other 10 % (``plateau_threshold``). The relation check (:mod:`.relation_check`) is then fitted on the same split:
the pairs whose question names the subject, masked as it reads them, and every pair as it is. Deterministic for a seed on one machine; a few minutes on 2 cores, most of
it embedding the texts.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from memedit.embeddings import DEFAULT_EMBEDDER, MINILM_SHA256, minilm_path
from memedit.files import sha256_file, write_atomic
from memedit.model_files import DATA_ENV, data_dir

from .detector import HEAD_FILE, HEAD_META, SCALARS, TRAIN_COMMAND, EditScope, Head, head_judges, mask_subject, mention_of
from .entities import find_mention, mask, mask_prompt
from .relation_check import CHECK_FILE, CHECK_META, MAX_LENGTH, RANK, SCALE, TARGETS, RelationCheck, adapted_layers, encode_pairs, load_minilm, mean_pool
from .relations import RelationBank, bank_arrays, relation_groups, typical_targets
from .scope import DEFAULT_MAX_LENGTH, FORMAT_VERSION, CrossEncoderScope, ScopePair, _load_model
from .scope_pairs import best_threshold, plateau_threshold, scope_metrics, scope_pairs, split_by_statement

KNOWEDIT_FILES = {"zsre": "knowedit/ZsRE/ZsRE-test-all.json", "wiki_counterfact": "knowedit/wiki_counterfact/train_cf.json"}
TRAIN_CASES = (200, 800)
HIDDEN = 32
# Members of the head's ensemble, fitted from seeds seed, seed+1, ...: their average logit
# varies less from one training run to the next than one member's does.
ENSEMBLE = 5
# Whether the head reads the product of the masked question's and prompt's embeddings besides
# the scalar features. Measured on the earlier people's-wordings set and KnowEdit pairs: with the
# template pairs, the product gives fewer false hits on both; without them, it overfits KnowEdit.
# Measured again on the held-out wordings: without it, 87.4 % right but 8.3 % false hits, and
# KnowEdit F1 0.888 with 11.5 % of locality prompts in scope (0.925 and 2.9 % with it).
RELATION_VECTOR = True
TEMPLATE_ROUNDS = 6  # the template pairs are drawn six times (other names, other negatives) to weigh them against KnowEdit
# While training and calibrating, bank rows this close to a question are ignored: a template
# question must not find itself (or its lower-cased copy) in the bank, as a new wording never does.
BANK_HOLDOUT = 0.97


def knowedit_training_pairs(data: Path | None = None, cases: tuple[int, int] = TRAIN_CASES, seed: int = 0) -> list[ScopePair]:
    """Labelled pairs from KnowEdit cases ``cases`` (start, end) of both data sets."""
    from memedit.eval.knowedit import load_knowedit

    start, end = cases
    if start < 200:
        raise ValueError("KnowEdit cases 0-199 are the evaluation slice; training starts at case 200 or later")
    data = data or data_dir()
    pairs: list[ScopePair] = []
    for name, relative in KNOWEDIT_FILES.items():
        path = data / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; set {DATA_ENV} to the folder that holds knowedit/")
        pairs += scope_pairs(load_knowedit(path, limit=end, dataset=name)[start:end], seed=seed)
    return pairs


TEMPLATES = Path(__file__).parent / "data" / "relation_templates.json"
# People's questions about invented entities, by edit (written for this project; the earlier
# bench set of `bench/scope.py`, whose mistakes were read while developing, so it trains now).
QUESTIONS = Path(__file__).parent / "data" / "scope_questions.jsonl"


def read_templates(path: str | Path = TEMPLATES) -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, int],
                                                           dict[str, list[dict[str, Any]]]]:
    """(the relations, the invented names by type, each relation's ``same_as`` group by name,
    the relations by subject type) of a templates file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    relations = data["relations"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for relation in relations:
        by_type.setdefault(relation["subject_type"], []).append(relation)
    return relations, data["names"], dict(zip((r["name"] for r in relations), relation_groups(relations))), by_type


def template_edit(rng: random.Random, relation: dict[str, Any], subject: str) -> Any:
    """An edit of ``relation`` about ``subject``: one of its prompts, one of its example targets."""
    from memedit.edit import Edit

    return Edit(subject=subject, prompt=rng.choice(relation["prompts"]), target=rng.choice(relation["target_examples"]))


def template_pairs(path: str | Path = TEMPLATES, seed: int = 0, per_question: int = 2,
                   embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> list[ScopePair]:
    """Question-shaped pairs from our hand-written relation templates (``data/relation_templates.json``:
    relations, each with cloze prompts, the ways people ask for it and invented targets, and
    invented names by type). Each question, about an invented entity, is in scope of the edit
    of its relation about that entity; out of scope of ``per_question`` edits of other
    relations about the same entity (preferring relations of the same subject type) and of
    the same relation about another entity. With ``embed``, the other relations are the
    ones people most easily confuse with it (nearest by their questions' mean vector:
    a birth year for a birthplace), and one more at random."""
    relations, names, group, by_type = read_templates(path)
    rng = random.Random(seed)
    near = None if embed is None else relation_similarity(relations, embed)
    pairs: list[ScopePair] = []
    for relation in relations:
        pool = names[relation["subject_type"]]
        same = [r for r in relations if r is not relation and group[r["name"]] == group[relation["name"]]]
        others = [r for r in by_type[relation["subject_type"]] if group[r["name"]] != group[relation["name"]]] \
            or [r for r in relations if group[r["name"]] != group[relation["name"]]]
        ranked = None if near is None else sorted(others, key=lambda r: -near[relation["name"], r["name"]])  # confusable first
        for question in relation["questions"]:
            subject = rng.choice(pool)
            text = question.replace("{}", subject, 1)
            own = template_edit(rng, relation, subject)
            pairs.append(ScopePair(text, own.statement, 1, "template", own))
            for alike in same:  # asked with the same words: in scope of each other's edits
                twin = template_edit(rng, alike, subject)
                pairs.append(ScopePair(text, twin.statement, 1, "template_same_as", twin))
            if ranked is None:
                chosen = rng.sample(others, min(per_question, len(others)))
            else:
                chosen = rng.sample(ranked[:2 * per_question], min(per_question, len(ranked)))
                rest = [r for r in others if r not in chosen]
                chosen += [rng.choice(rest)] if rest else []
            for other in chosen:
                if other["subject_type"] not in (relation["subject_type"],):
                    continue
                wrong = template_edit(rng, other, subject)
                pairs.append(ScopePair(text, wrong.statement, 0, "template_other_relation", wrong))
            stranger = rng.choice([n for n in pool if n != subject] or pool)
            if stranger != subject:
                elsewhere = template_edit(rng, relation, stranger)
                pairs.append(ScopePair(text, elsewhere.statement, 0, "template_other_subject", elsewhere))
    return pairs


def compound_pairs(path: str | Path = TEMPLATES, seed: int = 0, per_relation: int = 3) -> list[ScopePair]:
    """Questions that ask two hops at once ("Where was the CEO of X born?"), as a multi-hop
    router's sub-questions sometimes do: in scope of the first hop's edit about X (the CEO of
    X), out of scope of X's other edits, the second hop's relation about X included. A
    relation is a first hop where the templates give what its target is (``target_type``)
    and a noun for it (``noun``); the second hop is a question of a relation of that type."""
    relations, names, group, by_type = read_templates(path)
    rng = random.Random(seed)
    pairs: list[ScopePair] = []
    for first in relations:
        seconds = by_type.get(first.get("target_type", ""), [])
        if not seconds or not first.get("noun"):
            continue
        for _ in range(per_relation):
            subject = rng.choice(names[first["subject_type"]])
            second = rng.choice(seconds)
            phrase = rng.choice((f"the {first['noun']} of {subject}", f"{subject}'s {first['noun']}"))
            text = rng.choice(second["questions"]).replace("{}", phrase, 1)
            own = template_edit(rng, first, subject)
            pairs.append(ScopePair(text, own.statement, 1, "template_compound", own))
            others = [r for r in by_type[first["subject_type"]] if group[r["name"]] != group[first["name"]]]
            if group[second["name"]] != group[first["name"]] and second in others:
                others.remove(second)
                wrong = template_edit(rng, second, subject)  # "Where was the CEO of X born?" does not ask where X was founded
                pairs.append(ScopePair(text, wrong.statement, 0, "template_compound_other_relation", wrong))
            for other in rng.sample(others, min(1, len(others))):
                wrong = template_edit(rng, other, subject)
                pairs.append(ScopePair(text, wrong.statement, 0, "template_compound_other_relation", wrong))
    return pairs


def default_training_pairs(seed: int = 0, embedder: Any = None) -> list[ScopePair]:
    """What the shipped head is trained on: KnowEdit cases 200-799, the template pairs
    (their negatives the relations nearest to each question's, by MiniLM) with the compound
    questions built from them, and the pairs of ``data/scope_questions.jsonl``."""
    from memedit.embeddings import get_embedder

    embed = (embedder or get_embedder()).encode
    pairs = knowedit_training_pairs(seed=seed)
    for round_ in range(TEMPLATE_ROUNDS):
        pairs += template_pairs(seed=seed + round_, embed=embed) + compound_pairs(seed=seed + round_)
    return pairs + question_pairs(QUESTIONS)


def question_pairs(path: str | Path) -> list[ScopePair]:
    """Labelled pairs from a scope-questions file (the format of ``memedit scope eval``): each
    question with its edit (in scope) and with the other edits of its group (out of scope:
    the same entity, another relation)."""
    from memedit.eval.scope_eval import load_scope_questions

    edits, questions = load_scope_questions(path)
    groups: dict[str, set[int]] = {}
    for q in questions:
        if q.edit is not None:
            groups.setdefault(q.group, set()).add(q.edit)
    pairs = []
    for q in questions:
        for i in sorted(groups.get(q.group, set()) | ({q.edit} if q.edit is not None else set())):
            pairs.append(ScopePair(q.text, edits[i].statement, int(i == q.edit), "questions", edits[i]))
    return pairs


def relation_similarity(relations: Sequence[dict[str, Any]], embed: Callable[[Sequence[str]], np.ndarray]
                        ) -> dict[tuple[str, str], float]:
    """Cosine between the mean vectors of each two relations' masked questions."""
    names = [r["name"] for r in relations]
    means = []
    for r in relations:
        vectors = embed([mask_prompt(q) for q in r["questions"]])
        mean = vectors.mean(axis=0)
        means.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
    sims = np.stack(means) @ np.stack(means).T
    return {(a, b): float(sims[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}


def typed_forms(pairs: Sequence[ScopePair], seed: int = 0, share: float = 0.5) -> list[ScopePair]:
    """For a ``share`` of the pairs whose question names the edit's subject, the same pair
    with the question as a user might type it: lower case, a typo in the name, or part of it."""
    rng = random.Random(seed)
    out = []
    for pair in pairs:
        edit = pair.edit
        if edit is None or edit.subject is None or rng.random() >= share:
            continue
        mention = find_mention(pair.question, edit.subject)
        if mention is None or mention.kind != "exact":
            continue
        name = pair.question[mention.start:mention.end]
        form = rng.choice(("lower", "typo", "part"))
        if form == "lower":
            question = pair.question.casefold()
        elif form == "typo":
            words = name.split()
            longest = max(range(len(words)), key=lambda i: len(words[i]))
            if len(words[longest]) < 5:
                continue
            word, i = words[longest], rng.randrange(1, len(words[longest]) - 1)
            words[longest] = word[:i] + word[i + 1:] if rng.random() < 0.5 else word[:i] + word[i + 1] + word[i] + word[i + 2:]
            question = pair.question[:mention.start] + " ".join(words) + pair.question[mention.end:]
        else:
            words = name.split()
            if len(words) < 2:
                continue
            question = pair.question[:mention.start] + words[-1] + pair.question[mention.end:]
        out.append(replace(pair, question=question, kind=pair.kind + f"+{form}"))
    return out


def featurise(scope: EditScope, pairs: Sequence[ScopePair], progress: bool = True) -> np.ndarray:
    """The head's input rows for ``pairs``, embedding every distinct text once."""
    from tqdm import tqdm

    texts: list[str] = []
    for p in pairs:
        texts += scope.texts(p.question, [p.edit])[2]
    texts = list(dict.fromkeys(texts))
    scope.CACHE_SIZE = max(scope.CACHE_SIZE, 2 * len(texts))  # every text stays cached until its pair is read
    scope.embed(texts)  # warm the cache in large batches
    rows = []
    for p in tqdm(pairs, desc="scope features", unit="pair", file=sys.stderr, disable=not progress):
        rows.append(scope.features(p.question, [p.edit])[0][0])
    return np.stack(rows)


def fit_head(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 40, hidden: int = HIDDEN, lr: float = 3e-3,
             weight_decay: float = 1e-4, columns: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """An MLP head fitted with AdamW on binary cross-entropy (classes weighted to balance)."""
    import torch

    columns = np.arange(x.shape[1]) if columns is None else np.asarray(columns)
    x = x[:, columns]
    mean, std = x.mean(0), x.std(0) + 1e-6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        xs = torch.from_numpy((x - mean) / std).float()
        ys = torch.from_numpy(y.astype(np.float32))
        positive = float(ys.mean())
        weights = torch.where(ys > 0.5, 0.5 / max(positive, 1e-6), 0.5 / max(1 - positive, 1e-6))
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), 256):
                idx = order[start:start + 256]
                logits = model(xs[idx]).squeeze(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, ys[idx], weight=weights[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    first, second = model[0], model[2]
    return {"w1": first.weight.detach().numpy().T.copy(), "b1": first.bias.detach().numpy().copy(),
            "w2": second.weight.detach().numpy()[0].copy(), "b2": second.bias.detach().numpy().reshape(()).copy(),
            "mean": mean.astype(np.float32), "std": std.astype(np.float32), "columns": columns.astype(np.int64)}


def train(out: str | Path, pairs: Sequence[ScopePair] | None = None, embedder: Any = None, seed: int = 0,
          progress: bool = True, holdout: float = 0.1, sources: Sequence[str] = (), relation_vector: bool = RELATION_VECTOR,
          check: bool = True) -> EditScope:
    """Fit, calibrate and save a head in ``out`` and, with ``check``, the relation check beside
    it (on the same pairs, split the same way); returns the detector that uses them."""
    from safetensors.numpy import save_file


    started = time.perf_counter()
    pairs = list(pairs) if pairs is not None else default_training_pairs(seed, embedder)
    train_pairs, held = split_by_statement(pairs, holdout, seed)
    train_pairs += typed_forms(train_pairs, seed)
    held_all = held + typed_forms(held, seed + 1)
    blank = Head({"w1": np.zeros((384 + len(SCALARS), 1), np.float32), "b1": np.zeros(1, np.float32),
                  "w2": np.zeros(1, np.float32), "b2": np.zeros((), np.float32),
                  "mean": np.zeros(384 + len(SCALARS), np.float32), "std": np.ones(384 + len(SCALARS), np.float32)})
    scope = EditScope(embedder, head=blank, meta={})
    bank = RelationBank.build(scope.embed)
    blank.bank, blank.typical_targets = bank, typical_targets(TEMPLATES)
    scope.bank_holdout = BANK_HOLDOUT
    x, y = _judged(featurise(scope, train_pairs, progress), train_pairs)
    columns = None if relation_vector else np.arange(384, 384 + len(SCALARS))
    members = [fit_head(x, y, seed + i, columns=columns) for i in range(ENSEMBLE)]
    weights = {**members[0], **{k: np.stack([m[k] for m in members]) for k in ("w1", "b1", "w2", "b2")}, **bank_arrays(bank)}
    scope.head = Head(weights)
    held_x, labels = _judged(featurise(scope, held_all, progress=False), held_all)
    held_scores = scope.head.probabilities(held_x)
    scope.bank_holdout = None
    threshold = plateau_threshold(held_scores, labels)
    fit = scope_metrics(held_scores, labels, threshold)
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HEAD_META).unlink(missing_ok=True)  # never a loadable half-written head
    save_file(weights, str(folder / HEAD_FILE))
    meta = {"format": 1, "embedder": DEFAULT_EMBEDDER, "scalars": list(SCALARS), "hidden": HIDDEN, "ensemble": ENSEMBLE,
            "relation_vector": relation_vector,
            "threshold": threshold, "seed": seed, "train_pairs": len(train_pairs), "calibration_pairs": len(held_all),
            "calibration": {k: round(fit[k], 4) for k in ("precision", "recall", "f1")},
            "data": ["KnowEdit ZsRE and WikiData_counterfact cases 200-799", "relation_templates.json", "scope_questions.jsonl", *sources],
            "bank": {"relations": bank.size, "rows": len(bank.relation), "holdout": BANK_HOLDOUT,
                     "typical_targets": list(blank.typical_targets)},
            "seconds": round(time.perf_counter() - started, 1), "sha256": sha256_file(folder / HEAD_FILE)}
    write_atomic(folder / HEAD_META, (json.dumps(meta, indent=2) + "\n").encode())
    scope.meta, scope.threshold = meta, threshold
    for stale in (CHECK_META, CHECK_FILE):
        (folder / stale).unlink(missing_ok=True)  # a check beside the head is always this run's
    if check:
        # The check reads masked pairs; the same pairs unmasked, as extra training data, made it
        # find 5 more points of the held-out wordings' edits (their read half) for one more false hit.
        scope.check = train_check(masked_pairs(train_pairs) + list(train_pairs), masked_pairs(held_all) + list(held_all),
                                  folder, seed=seed, progress=progress)
    return scope


def _judged(x: np.ndarray, pairs: Sequence[ScopePair]) -> tuple[np.ndarray, np.ndarray]:
    """The rows (and labels) of the pairs the head judges (see ``detector.head_judges``)."""
    keep = np.array([head_judges(row) for row in x], dtype=bool)
    return x[keep], np.array([p.label for p in pairs])[keep]


# ---------------------------------------------------------------- the cross-encoder


def train_cross_encoder(pairs: Sequence[ScopePair], out_dir: str | Path, epochs: int = 2, batch_size: int = 32,
                        lr: float = 3e-5, seed: int = 0, progress: bool = True, max_length: int = DEFAULT_MAX_LENGTH,
                        holdout: float = 0.1) -> CrossEncoderScope:
    """Fine-tune a cross-encoder from the packaged MiniLM on ``pairs`` and save it in ``out_dir``.

    A ``holdout`` share of the statements (with all their pairs) is kept out of
    training; the threshold is the F1-max one on those pairs (on the training pairs
    when the held-out ones lack a class). Deterministic for a seed on one machine.
    """
    import torch

    pairs = list(pairs)
    if not any(p.label == 1 for p in pairs) or not any(p.label == 0 for p in pairs):
        raise ValueError("training needs both in-scope (label 1) and out-of-scope (label 0) pairs")
    train_pairs, held = split_by_statement(pairs, holdout, seed)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = _load_model(minilm_path())
        scope = CrossEncoderScope(model, tokenizer, max_length=max_length)
        losses = _fit(scope, train_pairs, epochs, batch_size, lr, seed, progress)
    seconds = time.perf_counter() - started
    calibration = held if {p.label for p in held} == {0, 1} else train_pairs
    scores, labels = scope.pair_scores(calibration), np.array([p.label for p in calibration])
    scope.threshold = best_threshold(scores, labels)
    fit = scope_metrics(scores, labels, scope.threshold)
    scope.meta = {
        "format": FORMAT_VERSION, "threshold": scope.threshold, "max_length": max_length,
        "train_pairs": len(train_pairs), "calibration_pairs": len(calibration),
        "calibrated_on": "held-out" if calibration is held else "train",
        "calibration": {k: fit[k] for k in ("precision", "recall", "f1")},
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])), "train_seconds": round(seconds, 1),
        "base_model": DEFAULT_EMBEDDER, "base_model_sha256": MINILM_SHA256,
    }
    scope.save(out_dir)
    return scope

def _fit(scope: CrossEncoderScope, pairs: list[ScopePair], epochs: int, batch_size: int, lr: float, seed: int,
         progress: bool) -> list[float]:
    """Fine-tune the cross-encoder (its word-embedding table, half the weights, stays as
    pretrained: cheaper steps, less overfitting)."""
    scope.model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in scope.model.parameters() if p.requires_grad]
    scope.model.train()
    losses = fit_pairs(lambda items: scope.model(**scope._encode(items)).logits.squeeze(-1), params, pairs, epochs,
                       batch_size, lr, seed, progress, "training scope cross-encoder")
    scope.model.eval()
    return losses


def fit_pairs(logits: Callable[[list[tuple[str, str]]], Any], params: list[Any], pairs: list[ScopePair], epochs: int,
              batch_size: int, lr: float, seed: int, progress: bool, desc: str) -> list[float]:
    """The training loop of a pair reader (the cross-encoder, the relation check): ``logits``
    of (question, statement) items, AdamW on ``params``, linear warm-up and decay, binary
    cross-entropy; the losses, step by step."""
    import torch
    from tqdm import tqdm

    batches = [b for epoch in range(epochs) for b in _batches(pairs, batch_size, seed + epoch)]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, len(batches) // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (len(batches) - step) / max(1, len(batches) - warmup))))
    losses: list[float] = []
    with tqdm(total=len(batches), desc=desc, unit="batch", file=sys.stderr, disable=not progress) as bar:
        for batch in batches:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits([(p.question, p.statement) for p in batch]), torch.tensor([float(p.label) for p in batch]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            bar.update()
    return losses


def _batches(pairs: list[ScopePair], batch_size: int, seed: int) -> list[list[ScopePair]]:
    """Shuffled batches of similar length (less padding), in a shuffled order; deterministic for a seed."""
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    batches: list[list[ScopePair]] = []
    pool = batch_size * 32
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(pairs[i].question) + len(pairs[i].statement))
        batches += [[pairs[i] for i in chunk[j:j + batch_size]] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------- the relation check


class AdaptedMiniLM:
    """MiniLM with trainable adapters beside its frozen matrices, for :func:`train_check`."""

    def __init__(self, seed: int) -> None:
        import torch

        self.model, self.tokenizer = load_minilm()
        for p in self.model.parameters():
            p.requires_grad_(False)
        generator = torch.Generator().manual_seed(seed)
        self.adapters: dict[str, tuple[Any, Any]] = {}
        for name, linear in adapted_layers(self.model):
            a = torch.nn.Parameter(torch.randn(RANK, linear.in_features, generator=generator) / linear.in_features ** 0.5)
            b = torch.nn.Parameter(torch.zeros(linear.out_features, RANK))
            self.adapters[name] = (a, b)
            linear.register_forward_hook(lambda module, args, out, a=a, b=b: out + SCALE * (args[0] @ a.T) @ b.T)
        self.classifier = torch.nn.Linear(self.model.config.hidden_size, 1)
        torch.nn.init.zeros_(self.classifier.weight)
        torch.nn.init.zeros_(self.classifier.bias)

    def parameters(self) -> list[Any]:
        return [p for pair in self.adapters.values() for p in pair] + list(self.classifier.parameters())

    def logits(self, items: Sequence[tuple[str, str]]) -> Any:
        batch = encode_pairs(self.tokenizer, items)
        return self.classifier(mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])).squeeze(-1)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"{name}.{part}": t.detach().numpy().copy() for name, (a, b) in self.adapters.items() for part, t in (("A", a), ("B", b))}
        out["classifier.weight"] = self.classifier.weight.detach().numpy()[0].copy()
        out["classifier.bias"] = self.classifier.bias.detach().numpy().reshape(()).copy()
        return out


def masked_pairs(pairs: Sequence[Any]) -> list[Any]:
    """The pairs (``ScopePair`` with ``edit``) whose question names the edit's subject, as the
    check reads them; the others are not its to judge."""
    out = []
    for p in pairs:
        edit = p.edit
        if edit is None or edit.subject is None:
            continue
        mention = mention_of(p.question, edit)
        if mention is not None:
            out.append(replace(p, question=mask(p.question, mention), statement=mask_subject(edit)))
    return out


def train_check(train_pairs: Sequence[Any], held_pairs: Sequence[Any], out: str | Path, epochs: int = 2,
                batch_size: int = 32, lr: float = 5e-4, seed: int = 0, progress: bool = True) -> RelationCheck:
    """Fit the adapters on ``train_pairs`` (masked, see :func:`masked_pairs`), set the threshold
    at the middle of the F1 plateau on ``held_pairs`` (:func:`plateau_threshold`, as for the
    head: the F1-max alone sat at 0.87 on a plateau reaching down to 0.13, and turned down
    questions unlike the calibration pairs), save in ``out`` and return the loaded check."""
    import torch
    from safetensors.numpy import save_file

    started = time.perf_counter()
    train_pairs, held_pairs = list(train_pairs), list(held_pairs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapted = AdaptedMiniLM(seed)
        adapted.model.train()
        losses = fit_pairs(adapted.logits, adapted.parameters(), train_pairs, epochs, batch_size, lr, seed, progress,
                           "training the relation check")
    arrays = adapted.arrays()
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECK_META).unlink(missing_ok=True)  # never a loadable half-written check
    save_file(arrays, str(folder / CHECK_FILE))
    meta = {"format": 1, "base_model": DEFAULT_EMBEDDER, "base_model_sha256": MINILM_SHA256, "rank": RANK, "scale": SCALE,
            "targets": list(TARGETS), "max_length": MAX_LENGTH, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "train_pairs": len(train_pairs), "calibration_pairs": len(held_pairs), "threshold": 0.5,
            "final_loss": round(float(np.mean(losses[-max(1, len(losses) // 10):])), 4),
            "seconds": round(time.perf_counter() - started, 1), "sha256": sha256_file(folder / CHECK_FILE)}
    write_atomic(folder / CHECK_META, (json.dumps(meta, indent=2) + "\n").encode())
    check = RelationCheck.load(folder, fix=f"rebuild it with: {TRAIN_COMMAND} --out {folder}")  # as a user will run it
    labels = np.array([p.label for p in held_pairs])
    scores = check.scores([(p.question, p.statement) for p in held_pairs])
    threshold = plateau_threshold(scores, labels)
    fit = scope_metrics(scores, labels, threshold)
    meta.update(threshold=threshold, calibration={k: round(fit[k], 4) for k in ("precision", "recall", "f1")})
    write_atomic(folder / CHECK_META, (json.dumps(meta, indent=2) + "\n").encode())
    check.threshold, check.meta = threshold, meta
    return check

