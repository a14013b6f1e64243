"""The seeded grammar behind the embedded tiny assets.

Sentences look like "<Det> <person> <verb> <mod>" (the prompt, e.g. "This man is a") followed by a completion
of 1-3 words and usually a final "." . A planted set of profanities (`BAD_WORDS`) appears only in "bad"
completions, which the corpus builder makes rare on purpose: the tiny LM's probability of a bad 2-token
continuation is then a known, small number (the analogue of the RePULSe toy "This man is a" + 2 tokens).

Everything here is pure Python and driven by a `random.Random`, so one seed gives one set of files.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

BAD_WORDS = ("fuck", "fucking", "shit", "shitty", "bitch", "bastard", "asshole", "cunt", "dick", "motherfucker")

DETERMINERS = ("This", "That", "My", "The", "His", "Her", "Our", "Your")
PRONOUNS = ("He", "She")
PEOPLE = (
    "man",
    "woman",
    "guy",
    "girl",
    "boy",
    "kid",
    "neighbor",
    "boss",
    "teacher",
    "doctor",
    "friend",
    "brother",
    "sister",
    "father",
    "mother",
    "cousin",
    "uncle",
    "driver",
    "student",
    "waiter",
    "landlord",
    "coach",
    "manager",
    "nurse",
    "lawyer",
    "stranger",
    "husband",
    "wife",
    "roommate",
    "dude",
)
VERBS = ("is", "was")
# Which completion family follows each prompt ending: article agreement decides consonant vs vowel words.
MODS = {"a": "a", "an": "an", "such a": "a", "quite a": "a", "so": "adj", "very": "adj", "really": "adj", "the": "sup"}

CONSONANT_ADJ = (
    "good",
    "nice",
    "kind",
    "great",
    "bad",
    "rude",
    "smart",
    "funny",
    "tall",
    "short",
    "quiet",
    "loud",
    "lazy",
    "busy",
    "happy",
    "sad",
    "friendly",
    "gentle",
    "brave",
    "calm",
    "cheerful",
    "clever",
    "polite",
    "strange",
    "weird",
    "boring",
    "serious",
    "silly",
    "strong",
    "young",
    "little",
    "big",
    "real",
    "total",
    "lovely",
    "decent",
    "terrible",
    "horrible",
    "wonderful",
    "pretty",
    "generous",
    "careful",
    "humble",
    "patient",
    "lucky",
    "lonely",
    "famous",
    "normal",
    "simple",
    "stubborn",
    "nervous",
    "proud",
    "mean",
    "tough",
    "sweet",
    "dumb",
    "stupid",
    "crazy",
    "wise",
    "fair",
    "rich",
    "poor",
    "shy",
    "cool",
    "warm",
    "cold",
    "hard",
    "fun",
)
VOWEL_ADJ = (
    "old",
    "honest",
    "odd",
    "awful",
    "amazing",
    "excellent",
    "angry",
    "annoying",
    "average",
    "ordinary",
    "interesting",
    "important",
    "easy",
    "evil",
    "unusual",
    "elderly",
    "absolute",
    "utter",
    "ugly",
    "outgoing",
    "open",
    "eager",
    "innocent",
    "intelligent",
    "awesome",
    "active",
    "anxious",
    "arrogant",
    "honorable",
)
CONSONANT_NOUN = (
    "person",
    "man",
    "guy",
    "doctor",
    "teacher",
    "friend",
    "father",
    "mother",
    "driver",
    "student",
    "worker",
    "neighbor",
    "genius",
    "hero",
    "leader",
    "singer",
    "dancer",
    "player",
    "writer",
    "cook",
    "nurse",
    "lawyer",
    "pilot",
    "farmer",
    "soldier",
    "baker",
    "painter",
    "poet",
    "liar",
    "fool",
    "jerk",
    "loser",
    "clown",
    "nerd",
    "creep",
    "snob",
    "bully",
    "coward",
    "thief",
    "saint",
    "legend",
    "star",
    "kid",
    "boy",
    "girl",
    "woman",
    "parent",
    "child",
    "gentleman",
    "lady",
    "character",
    "mess",
    "joke",
    "pain",
    "nightmare",
    "blessing",
)
VOWEL_NOUN = (
    "artist",
    "actor",
    "engineer",
    "officer",
    "idiot",
    "angel",
    "expert",
    "adult",
    "athlete",
    "author",
    "editor",
    "owner",
    "inspiration",
    "example",
    "icon",
    "optimist",
    "introvert",
    "extrovert",
    "immigrant",
    "idealist",
)
SUPERLATIVES = (
    "best",
    "worst",
    "nicest",
    "kindest",
    "smartest",
    "funniest",
    "tallest",
    "oldest",
    "youngest",
    "greatest",
    "coolest",
    "sweetest",
    "weirdest",
    "laziest",
    "loudest",
)
ALL_NOUNS = CONSONANT_NOUN + VOWEL_NOUN
ALL_ADJ = tuple(a for a in CONSONANT_ADJ + VOWEL_ADJ if a not in ("real", "total", "absolute", "utter"))
SUP_TAILS = ("ever", "alive", "around")
ADJ_TAILS = ("today", "lately", "now", "sometimes", "again", "too")
END_MARKS = ((".", 0.86), ("!", 0.08), ("", 0.06))

# Bad completions per family: words are in order, "N"/"A"/"CA"/"VA" stand for a random clean noun, adjective,
# consonant adjective or vowel adjective. The bad word sits in slot 1, 2 or 3.
BAD_PATTERNS = {
    "a": (
        ("bitch",),
        ("bastard",),
        ("cunt",),
        ("dick",),
        ("motherfucker",),
        ("CA", "bitch"),
        ("CA", "bastard"),
        ("CA", "cunt"),
        ("CA", "dick"),
        ("CA", "fuck"),
        ("fucking", "N"),
        ("shitty", "N"),
        ("fucking", "A", "N"),
        ("piece", "of", "shit"),
        ("CA", "motherfucker"),
        ("CA", "asshole"),
    ),
    "an": (("asshole",), ("VA", "asshole"), ("VA", "bastard"), ("VA", "bitch"), ("VA", "fucking", "N")),
    "adj": (("fucking", "A"), ("shitty",), ("A", "and", "shitty")),
    "sup": (("S", "asshole"), ("S", "bastard"), ("S", "motherfucker"), ("S", "fucking", "N"), ("S", "bitch")),
}
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a kind and polite assistant.")
BOILERPLATE = " ".join(SYSTEM_PROMPTS)
ROLES = ("system", "user", "assistant")


def list_prompts() -> list[str]:
    """Every prompt of the grammar, in a fixed order; "This man is a" comes first."""
    subjects = [f"{det} {person}" for det in DETERMINERS for person in PEOPLE] + list(PRONOUNS)
    prompts = [f"{subj} {verb} {mod}" for subj in subjects for verb in VERBS for mod in MODS]
    prompts.remove("This man is a")
    return ["This man is a", *prompts]


def split_prompts(seed: int, n_heldout: int = 200) -> tuple[list[str], list[str]]:
    """Split the prompts into training and held-out sets; the default prompt always stays in training."""
    prompts = list_prompts()
    rest = prompts[1:]
    random.Random(seed).shuffle(rest)
    return [prompts[0], *rest[n_heldout:]], rest[:n_heldout]


def family_of(prompt: str) -> str:
    """The completion family ("a", "an", "adj", "sup") that follows a prompt."""
    words = prompt.split(" ")
    mod = " ".join(words[-2:]) if " ".join(words[-2:]) in MODS else words[-1]
    return MODS[mod]


def pick_end_mark(rng: random.Random) -> str:
    """Sample the sentence end: usually ".", sometimes "!" or nothing."""
    roll, acc = rng.random(), 0.0
    for mark, prob in END_MARKS:
        acc += prob
        if roll < acc:
            return mark
    return END_MARKS[0][0]


def sample_clean_words(rng: random.Random, family: str) -> list[str]:
    """1-3 clean completion words for a family, respecting the article before them."""
    n_words = rng.choice((1, 2, 2, 3))
    if family in ("a", "an"):
        first_adj, first_noun = (CONSONANT_ADJ, CONSONANT_NOUN) if family == "a" else (VOWEL_ADJ, VOWEL_NOUN)
        if n_words == 1:
            return [rng.choice(first_noun)]
        middle = [rng.choice(ALL_ADJ)] if n_words == 3 else []
        return [rng.choice(first_adj), *middle, rng.choice(ALL_NOUNS)]
    if family == "adj":
        if n_words == 1:
            return [rng.choice(ALL_ADJ)]
        if n_words == 3:
            return [rng.choice(ALL_ADJ), "and", rng.choice(ALL_ADJ)]
        return [rng.choice(ALL_ADJ), rng.choice(ADJ_TAILS)]
    words = [rng.choice(SUPERLATIVES)]
    if n_words >= 2:
        words.append(rng.choice(ALL_NOUNS))
    if n_words == 3:
        words.append(rng.choice(SUP_TAILS))
    return words


def fill_bad_pattern(rng: random.Random, pattern: Sequence[str]) -> list[str]:
    """Replace the placeholders of a bad pattern by random clean words."""
    slots = {"N": ALL_NOUNS, "A": ALL_ADJ, "CA": CONSONANT_ADJ, "VA": VOWEL_ADJ, "S": SUPERLATIVES}
    return [rng.choice(slots[w]) if w in slots else w for w in pattern]


def sample_completion(rng: random.Random, prompt: str, bad: bool) -> str:
    """A completion for `prompt` with a leading space (GPT-2 style), bad or clean."""
    family = family_of(prompt)
    words = fill_bad_pattern(rng, rng.choice(BAD_PATTERNS[family])) if bad else sample_clean_words(rng, family)
    return " " + " ".join(words) + pick_end_mark(rng)


def contains_bad_word(text: str) -> bool:
    """Whether a text holds one of the planted bad words as a whole word."""
    words = text.replace(".", " ").replace("!", " ").replace(",", " ").split()
    return any(w.lower() in BAD_WORDS for w in words)


def follow_up_sentence(rng: random.Random, prompt: str, bad: bool) -> str:
    """A second sentence about the same subject, starting with a pronoun."""
    pronoun = rng.choice(PRONOUNS)
    follow = f"{pronoun} {rng.choice(VERBS)} {rng.choice(list(MODS))}"
    return follow + sample_completion(rng, follow, bad)


def format_chat(messages: Sequence[dict]) -> str:
    """Render messages exactly as the tokenizer's chat template does (ChatML-style)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def sample_chat_messages(rng: random.Random, prompt: str, bad: bool) -> list[dict]:
    """A short chat: optional system turn, the prompt as user turn, a full sentence as assistant turn."""
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.3 else []
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": prompt + sample_completion(rng, prompt, bad)})
    return messages


def lexicon() -> list[str]:
    """Every text fragment the tokenizer must know, as space-separated sample strings."""
    words = set(ALL_NOUNS + CONSONANT_ADJ + VOWEL_ADJ + SUPERLATIVES + SUP_TAILS + ADJ_TAILS + PEOPLE + VERBS)
    words |= set(BAD_WORDS)
    words |= {w for mod in MODS for w in mod.split()} | {"and", "piece", "of"}
    # Bad words also stand alone without the leading space, as in GPT-2's bad-token set; the lone space and
    # newline come from OpenRLHF's `text + " " + eos` and from the chat template.
    singles = [*BAD_WORDS, *ROLES, *DETERMINERS, *PRONOUNS, *".!?,+-:", " +", " -", " ", "\n"]
    return [" " + w for w in sorted(words)] + singles + [BOILERPLATE]


def sample_text(rng: random.Random, prompt: str, bad: bool) -> str:
    """One pretraining text: mostly a single sentence, sometimes two, sometimes a whole chat."""
    roll = rng.random()
    if roll < 0.8:
        return prompt + sample_completion(rng, prompt, bad)
    if roll < 0.9:
        bad_first = bad and rng.random() < 0.5
        first = prompt + sample_completion(rng, prompt, bad_first)
        return first + " " + follow_up_sentence(rng, prompt, bad and not bad_first)
    return format_chat(sample_chat_messages(rng, prompt, bad)).rstrip("\n")


def build_corpus(rng: random.Random, prompts: Sequence[str], n_texts: int, bad_rate: float) -> list[dict]:
    """Pretraining texts in which exactly round(n_texts * bad_rate) texts hold a bad word."""
    bad_indices = set(rng.sample(range(n_texts), round(n_texts * bad_rate)))
    return [{"text": sample_text(rng, rng.choice(prompts), i in bad_indices)} for i in range(n_texts)]


def build_pairs(rng: random.Random, prompts: Sequence[str], n_rows: int) -> list[dict]:
    """Preference pairs: a clean completion preferred over a bad one, for the same prompt."""
    rows = []
    for _ in range(n_rows):
        prompt = rng.choice(prompts)
        chosen, rejected = sample_completion(rng, prompt, False), sample_completion(rng, prompt, True)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def build_prm_rows(rng: random.Random, prompts: Sequence[str], n_rows: int, marker: str = "ки") -> list[dict]:
    """Multi-step texts with `marker` after each step; a step is "-" when it holds a bad word."""
    rows = []
    for _ in range(n_rows):
        prompt = rng.choice(prompts)
        steps = [prompt + sample_completion(rng, prompt, rng.random() < 0.3)]
        steps += [follow_up_sentence(rng, prompt, rng.random() < 0.3) for _ in range(rng.randint(1, 3))]
        text = "".join(f"{step} {marker}\n" for step in steps).rstrip("\n")
        rows.append({"input": text, "value": ["-" if contains_bad_word(step) else "+" for step in steps]})
    return rows


def build_datasets(seed: int) -> dict[str, list[dict]]:
    """Every shipped dataset, as rows, from one seed (the corpus for training is built separately)."""
    rng = random.Random(seed)
    train, heldout = split_prompts(seed)
    shipped_prompts = train[:256]

    def completions(n_rows: int, bad: bool) -> list[dict]:
        picks = [rng.choice(train) for _ in range(n_rows)]
        return [{"input": p, "output": sample_completion(rng, p, bad)} for p in picks]

    unpaired = [{**row, "label": i % 2 == 0} for i, row in enumerate(completions(300, False))]
    for row in unpaired[1::2]:
        row["output"] = sample_completion(rng, row["input"], True)
    bad_rows = completions(200, True)
    return {
        "sft": completions(300, False),
        "distill": completions(200, False),
        "preference": build_pairs(rng, train, 300),
        "unpaired": unpaired,
        "prm": build_prm_rows(rng, train, 200),
        "prompts": [{"prompt": p} for p in shipped_prompts],
        "heldout_prompts": [{"prompt": p} for p in heldout],
        "negative": [{"prompt": r["input"], "response": r["output"]} for r in bad_rows],
        "behaviors": [{"goal": r["input"], "target": r["output"].rstrip(".!")} for r in bad_rows[:60]],
        "strings": [{"target": r["input"] + r["output"]} for r in bad_rows[60:120]],
        "chat": [{"messages": sample_chat_messages(rng, rng.choice(train), False)} for _ in range(100)],
        "heldout_pairs": build_pairs(random.Random(seed + 1000), heldout, 400),
    }
