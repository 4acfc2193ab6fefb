"""Data generators of the lab: every data format, deterministic given a seed.

Responses are built from a `Style` (correct or not, on topic or not, complete or not, tone,
length, answer register, compliance) so a sampler can spread them from excellent to bad, and
the gold reward ranks them. Preference labels follow Bradley-Terry on the gold reward.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from alignscope.data.records import (
    PairExample,
    Prompt,
    PromptExample,
    RankedExample,
    SFTExample,
    UnpairedExample,
)
from alignscope.world.gold import GoldWeights, bt_probability, gold_reward
from alignscope.world.language import (
    AFFIRM_EMPHATIC,
    AFFIRM_PLAIN,
    ATTRIBUTES,
    CATEGORIES,
    COUNT_WORDS,
    FILLERS,
    GROUP,
    NEGATE_EMPHATIC,
    NEGATE_PLAIN,
    NOUNS,
    PHRASE_RE,
    SAFE_ACTIONS,
    STEPS,
    UNSAFE_ACTIONS,
    World,
    parse_prompt,
    prompt_content,
)


@dataclass(frozen=True)
class Style:
    """How a response is built: the knobs that the gold reward scores."""

    correct: bool = True  # right answer / true facts / valid list items / appropriate refusal
    on_topic: bool = True
    complete: bool = True  # all facts, all items, steps or a reason
    tone: str = "polite"  # "polite", "neutral" or "rude"
    length: str = "normal"  # "normal" or "long" (filler words)
    plain: bool = True  # plain answer register ("yes"/"no") rather than emphatic


GOOD = Style()


def random_style(rng: random.Random, p_good: float = 0.25) -> Style:
    """A good style with probability `p_good`, otherwise each knob flipped independently."""
    if rng.random() < p_good:
        return replace(GOOD, tone=rng.choice(("polite", "neutral")))
    return Style(
        correct=rng.random() < 0.6,
        on_topic=rng.random() < 0.75,
        complete=rng.random() < 0.6,
        tone=rng.choice(("polite", "neutral", "neutral", "rude")),
        length=rng.choice(("normal", "normal", "long")),
        plain=rng.random() < 0.6,
    )


def _answer_word(rng: random.Random, affirm: bool, plain: bool) -> str:
    group = (AFFIRM_PLAIN if plain else AFFIRM_EMPHATIC) if affirm else (NEGATE_PLAIN if plain else NEGATE_EMPHATIC)
    return group[0] if rng.random() < 0.7 else rng.choice(group)


def _other(rng: random.Random, options: Sequence[str], avoid: str) -> str:
    return rng.choice([o for o in options if o != avoid])


def _attr_phrase(obj_phrase: str, attr: str, value: str) -> str:
    return f"{obj_phrase} is made of {value}" if attr == "material" else f"{obj_phrase} is {value}"


def _describe(world: World, obj: str, style: Style, rng: random.Random) -> str:
    subject = obj if style.on_topic else _other(rng, NOUNS, obj)
    values = dict(world.facts[subject])
    if not style.correct:
        for attr in rng.sample(tuple(ATTRIBUTES), rng.choice((1, 2))):
            values[attr] = _other(rng, ATTRIBUTES[attr], values[attr])
    attrs = list(ATTRIBUTES) if style.complete else [rng.choice(tuple(ATTRIBUTES))]
    name = f"the {subject}" if style.on_topic or rng.random() < 0.5 else "this one"
    looks = [values[a] for a in attrs if a != "material"]
    parts = []
    if looks:
        parts.append(f"{name} is {' and '.join(looks)}.")
    if "material" in attrs:
        parts.append(f"{'it' if looks else name} is made of {values['material']}.")
    return " ".join(parts)


def _yesno(world: World, obj: str, attr: str, value: str, style: Style, rng: random.Random, single: bool) -> str:
    truth = world.truth(obj, value)
    affirm = truth if style.correct else not truth
    word = _answer_word(rng, affirm, style.plain)
    if single and style.length == "normal":
        return word
    if not style.complete:
        return word + "."
    subject = obj if style.on_topic else _other(rng, NOUNS, obj)
    # "no" answers state the true value when right, and some other value when wrong.
    if affirm:
        stated = value
    else:
        stated = world.facts[obj][attr] if style.correct else _other(rng, ATTRIBUTES[attr], value)
    return f"{word}, {_attr_phrase('the ' + subject, attr, stated)}."


def _list(category: str, n: int, style: Style, rng: random.Random) -> str:
    cat = category if style.on_topic else _other(rng, tuple(CATEGORIES), category)
    count = n if style.complete else max(1, n + rng.choice((-1, 1)))
    items = rng.sample(CATEGORIES[cat], min(count, len(CATEGORIES[cat])))
    if not style.correct:
        for i in rng.sample(range(len(items)), min(len(items), rng.choice((1, 2)))):
            pool = [x for c, xs in CATEGORIES.items() if c != cat for x in xs if x not in items]
            items[i] = rng.choice(pool)
    return f"here are {COUNT_WORDS[len(items)]} {category}: {', '.join(items)}."


def _refusal(action: str, style: Style) -> str:
    reason = f" it is not safe to {action}." if style.on_topic else " it is not safe."
    return "i cannot help with that." + (reason if style.complete else "")


def _compliance(action: str, style: Style, rng: random.Random) -> str:
    shown = action if style.on_topic else _other(rng, SAFE_ACTIONS + UNSAFE_ACTIONS, action)
    text = f"sure, here is how to {shown}:"
    if style.complete:
        s1, s2 = rng.sample(STEPS, 2)
        return f"{text} first {s1}, then {s2}."
    return text[:-1] + "."


def _howto(action: str, unsafe: bool, style: Style, rng: random.Random) -> str:
    comply = (not unsafe) if style.correct else unsafe
    return _compliance(action, style, rng) if comply else _refusal(action, style)


def _decorate(body: str, kind: str, style: Style, rng: random.Random) -> str:
    if kind == "single" and style.length == "normal":
        return body
    if style.tone == "polite":
        body = ("thanks for asking. " + body) if rng.random() < 0.3 else (body + " happy to help.")
        if kind == "howto" and body.startswith("i cannot"):
            body = "sorry, " + body
    elif style.tone == "rude":
        body = rng.choice(("ugh, ", "what a dumb question. ")) + body if rng.random() < 0.6 else body + " whatever."
    if style.length == "long":
        fill = rng.sample(FILLERS, 3)
        body = f"{fill[0]}, {fill[1]}, {body} {fill[2]}, that is it."
    return body


def respond(world: World, prompt: Prompt, style: Style, rng: random.Random) -> str:
    """A response to a lab prompt built with `style`."""
    p = parse_prompt(prompt)
    if p.kind == "describe":
        body = _describe(world, p.obj, style, rng)
    elif p.kind in ("yesno", "single"):
        body = _yesno(world, p.obj, p.attr, p.value, style, rng, single=p.kind == "single")
    elif p.kind == "list":
        body = _list(p.category, p.n, style, rng)
    else:
        body = _howto(p.action, p.unsafe, style, rng)
    return _decorate(body, p.kind, style, rng)


def good_response(world: World, prompt: Prompt, rng: random.Random) -> str:
    """A near-optimal response (correct, complete, polite, plain)."""
    return respond(world, prompt, GOOD, rng)


def candidate_responses(world: World, prompt: Prompt, k: int, rng: random.Random, p_good: float = 0.25) -> list[str]:
    """`k` responses spread from good to bad, distinct whenever the language allows."""
    out: list[str] = []
    for _ in range(20 * k):
        r = respond(world, prompt, random_style(rng, p_good), rng)
        if r not in out:
            out.append(r)
        if len(out) == k:
            return out
    while len(out) < k:
        out.append(respond(world, prompt, random_style(rng, p_good), rng))
    return out


def prompt_data(
    world: World, n: int, seed: int = 0, kinds: Sequence[str] | None = None, unsafe: bool | None = None
) -> list[PromptExample]:
    """`n` prompts (kinds drawn from `kinds`, or the default mix); meta holds kind and safety."""
    rng = random.Random(f"prompts-{seed}")
    out = []
    for _ in range(n):
        prompt = world.prompt(rng, rng.choice(kinds) if kinds else None, unsafe=unsafe)
        info = parse_prompt(prompt)
        out.append(PromptExample(prompt, {"kind": info.kind, "unsafe": info.unsafe}))
    return out


def sft_data(world: World, n: int, seed: int = 0, kinds: Sequence[str] | None = None) -> list[SFTExample]:
    """`n` prompts with good responses (refusals for unsafe prompts)."""
    rng = random.Random(f"sft-{seed}")
    return [
        SFTExample(p.prompt, good_response(world, p.prompt, rng), dict(p.meta))
        for p in prompt_data(world, n, seed, kinds)
    ]


def _distinct_pair(world, prompt, rng, weights) -> tuple[str, str, float, float]:
    for _ in range(50):
        a, b = candidate_responses(world, prompt, 2, rng)
        ra, rb = gold_reward(prompt, a, weights, world), gold_reward(prompt, b, weights, world)
        if ra != rb:
            return a, b, ra, rb
    raise RuntimeError(f"no two responses with different gold rewards for {prompt_content(prompt)!r}")


def pairwise_data(
    world: World,
    n: int,
    seed: int = 0,
    noise: float = 1.0,
    kinds: Sequence[str] | None = None,
    weights: GoldWeights | None = None,
) -> list[PairExample]:
    """Pairs labelled by Bradley-Terry on the gold reward: P(a > b) = sigma((r_a - r_b)/noise).

    The two responses always differ in gold reward, so at noise 0 the label is the gold order.
    `margin` is the gold gap r(chosen) - r(rejected) (negative when the label was flipped by noise);
    meta records both gold rewards and `p_chosen`, the BT probability of the label given.
    """
    rng = random.Random(f"pairs-{seed}")
    out = []
    for p in prompt_data(world, n, seed, kinds):
        a, b, ra, rb = _distinct_pair(world, p.prompt, rng, weights)
        p_a = bt_probability(ra, rb, noise)
        if rng.random() >= p_a:
            a, b, ra, rb, p_a = b, a, rb, ra, 1.0 - p_a
        meta = dict(p.meta, gold_chosen=ra, gold_rejected=rb, p_chosen=p_a, agrees_with_gold=ra > rb)
        out.append(PairExample(p.prompt, a, b, ra - rb, meta))
    return out


def ranked_data(
    world: World,
    n: int,
    k: int = 4,
    seed: int = 0,
    noise: float = 0.0,
    kinds: Sequence[str] | None = None,
    weights: GoldWeights | None = None,
) -> list[RankedExample]:
    """Rankings of `k` candidates: Plackett-Luce with utilities r_G/noise (gold order at noise 0).

    Sampling a ranking as the order of gold + Gumbel noise is Plackett-Luce, whose pairwise
    marginals for adjacent choices match Bradley-Terry. `scores` are the gold rewards.
    """
    rng = random.Random(f"ranked-{seed}")
    out = []
    for p in prompt_data(world, n, seed, kinds):
        cands = candidate_responses(world, p.prompt, k, rng)
        gold = [gold_reward(p.prompt, c, weights, world) for c in cands]
        keys = [g / noise - math.log(-math.log(max(rng.random(), 1e-300))) if noise > 0 else g for g in gold]
        order = sorted(range(k), key=lambda i: (-keys[i], i))
        out.append(RankedExample(p.prompt, [cands[i] for i in order], [gold[i] for i in order], dict(p.meta)))
    return out


def unpaired_data(
    world: World,
    n: int,
    seed: int = 0,
    threshold: float = 1.5,
    noise: float = 0.0,
    kinds: Sequence[str] | None = None,
    weights: GoldWeights | None = None,
) -> list[UnpairedExample]:
    """Single responses labelled desirable when r_G > threshold (with prob sigma((r_G - t)/noise)).

    The default threshold is about the median gold reward of sampled candidates, so roughly
    half the examples are desirable.
    """
    rng = random.Random(f"unpaired-{seed}")
    out = []
    for p in prompt_data(world, n, seed, kinds):
        c = candidate_responses(world, p.prompt, 1, rng)[0]
        g = gold_reward(p.prompt, c, weights, world)
        label = g > threshold if noise <= 0 else rng.random() < bt_probability(g, threshold, noise)
        out.append(UnpairedExample(p.prompt, c, label, dict(p.meta, gold=g)))
    return out


def refusal_pairs(world: World, n: int, seed: int = 0, similar: bool = False) -> list[PairExample]:
    """Unsafe prompts with a refusal chosen over either a compliance or a near-duplicate refusal.

    `similar=False`: the rejected response complies ("sure, here is how ..."), far from the
    refusal in token and hidden space. `similar=True`: the rejected response is the same refusal
    with a small harmful change (a rude word, or one leaked step that turns it into partial
    compliance): the high-CHES pairs that drive catastrophic likelihood displacement.
    """
    rng = random.Random(f"refusal-{seed}")
    out = []
    for p in prompt_data(world, n, seed, kinds=["howto"], unsafe=True):
        action = parse_prompt(p.prompt).action
        chosen = _refusal(action, GOOD)
        if similar:
            if rng.random() < 0.5:
                rejected = chosen[:-1] + ", but first " + rng.choice(STEPS) + "."
                change = "leaked_step"
            else:
                rejected = chosen[:-1] + " whatever."
                change = "rude"
        else:
            rejected = _compliance(action, replace(GOOD, tone="neutral"), rng)
            change = "compliance"
        gc, gr = gold_reward(p.prompt, chosen, None, world), gold_reward(p.prompt, rejected, None, world)
        out.append(PairExample(p.prompt, chosen, rejected, gc - gr, dict(p.meta, change=change, similar=similar)))
    return out


def refusal_opener_pairs(world: World, n: int, seed: int = 0) -> list[PairExample]:
    """Unsafe prompts with two refusals: the plain one chosen over the same one behind a rude opener.

    Both responses refuse, as in Razin et al.'s refusal data, and they differ from the first word
    on, so pushing the rejected refusal down pushes refusals down in general: these high-CHES pairs
    can make DPO turn a refusing model into a complying one (`refusal_pairs` near-duplicates
    differ only at the end, which leaves the first words, and so the refusal, mostly alone).
    """
    rng = random.Random(f"refusal-opener-{seed}")
    out = []
    for p in prompt_data(world, n, seed, kinds=["howto"], unsafe=True):
        chosen = _refusal(parse_prompt(p.prompt).action, GOOD)
        rejected = rng.choice(("ugh, ", "what a dumb question. ")) + chosen
        gc, gr = gold_reward(p.prompt, chosen, None, world), gold_reward(p.prompt, rejected, None, world)
        out.append(PairExample(p.prompt, chosen, rejected, gc - gr, dict(p.meta, change="rude_opener", similar=True)))
    return out


def single_token_pairs(
    world: World, n: int, seed: int = 0, chosen_plain: bool = True, rejected_plain: bool = False
) -> list[PairExample]:
    """One-word-answer prompts with two *correct* answers of different register ("no" over "never").

    The rejected answer means the same as the chosen one, so DPO's push away from it can raise
    the opposite answer ("yes"): single-token catastrophic displacement.
    """
    out = []
    for p in prompt_data(world, n, seed, kinds=["single"]):
        info = parse_prompt(p.prompt)
        truth = world.truth(info.obj, info.value)
        pick = {(True, True): AFFIRM_PLAIN, (True, False): AFFIRM_EMPHATIC}
        pick.update({(False, True): NEGATE_PLAIN, (False, False): NEGATE_EMPHATIC})
        c, r = pick[(truth, chosen_plain)][0], pick[(truth, rejected_plain)][0]
        if c == r:
            r = pick[(truth, rejected_plain)][1]
        out.append(PairExample(p.prompt, c, r, None, dict(p.meta, truth=truth)))
    return out


def paraphrase(response: str, rng: random.Random) -> str:
    """The same meaning (and exactly the same gold reward) in different tokens.

    Swaps synonyms within their group and reorders commutative parts (facts joined by
    "and", list items, a closing polite or filler sentence). Always changes the text when the
    response holds any phrase with a synonym, which every generated response does.
    """
    matches = list(PHRASE_RE.finditer(response))

    def swap(m: re.Match) -> str:
        return rng.choice([v for v in GROUP[m.group(0)] if v != m.group(0)])

    chosen = {i for i in range(len(matches)) if rng.random() < 0.5}
    if matches and not chosen:
        chosen = {rng.randrange(len(matches))}
    pieces, last = [], 0
    for i, m in enumerate(matches):
        pieces.append(response[last : m.start()])
        pieces.append(swap(m) if i in chosen else m.group(0))
        last = m.end()
    out = "".join(pieces) + response[last:]
    out = re.sub(r"\b(\w+) and (\w+)\b", lambda m: _maybe_swap(m, rng), out)
    return re.sub(r"\b((?:here|these) are \w+ \w+): ([a-z, ]+)\.", lambda m: _shuffle_items(m, rng), out)


def _maybe_swap(m: re.Match, rng: random.Random) -> str:
    return f"{m.group(2)} and {m.group(1)}" if rng.random() < 0.5 else m.group(0)


def _shuffle_items(m: re.Match, rng: random.Random) -> str:
    items = m.group(2).split(", ")
    return f"{m.group(1)}: {', '.join(rng.sample(items, len(items)))}."


def paraphrased_pairs(pairs: Sequence[PairExample], seed: int = 0) -> list[PairExample]:
    """Both responses of every pair paraphrased: a token-level distribution shift, same labels."""
    rng = random.Random(f"paraphrase-{seed}")
    return [
        PairExample(
            p.prompt, paraphrase(p.chosen, rng), paraphrase(p.rejected, rng), p.margin, dict(p.meta, paraphrased=True)
        )
        for p in pairs
    ]


def render_chat(prompt: Prompt, response: str) -> str:
    """One ChatML transcript, exactly as the tokenizer's chat template renders it."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    turns.append({"role": "assistant", "content": response})
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in turns)


def corpus(world: World, n: int, seed: int = 0, p_good: float = 0.25, p_paraphrase: float = 0.5) -> list[str]:
    """`n` ChatML transcripts mixing good and mediocre responses, some paraphrased.

    The pretraining text of the lab's base models: broad (every phrase and its synonyms, right
    and wrong facts, refusals and compliance on unsafe prompts) but not aligned.
    """
    rng = random.Random(f"corpus-{seed}")
    out = []
    for p in prompt_data(world, n, seed):
        r = respond(world, p.prompt, random_style(rng, p_good), rng)
        if rng.random() < p_paraphrase:
            r = paraphrase(r, rng)
        out.append(render_chat(p.prompt, r))
    return out
