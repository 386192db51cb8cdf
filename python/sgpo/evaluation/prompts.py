"""A deterministic generator of instructions with verifiable constraints, and its inverse (prompt text -> spec).

A prompt is a task sentence (one of :data:`TASK_TEMPLATES` applied to one of :data:`TOPICS`) followed by one to three
constraint sentences (:mod:`sgpo.evaluation.constraints`) whose groups do not overlap. The (template, topic) pairs are
split once into train and test by :data:`SPLIT_SEED`, so no task of the test split is ever trained on; prompts within a
split are drawn by ``seed``. Any prompt text the generator writes parses back to its spec (:func:`parse_prompt`), so
the judge needs nothing but the prompt string the pipeline already carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from sgpo.evaluation.constraints import CONSTRAINT_KINDS, Constraint, addresses_task

# topic as written in the prompt -> word stems an on-task answer mentions (matched at word starts, lowercase)
TOPICS: dict[str, tuple[str, ...]] = {
    "photosynthesis": ("photosynth", "plant", "chlorophyll", "sunlight", "leaf", "leaves"),
    "the water cycle": ("water", "rain", "evaporat", "cloud", "condens"),
    "volcanoes": ("volcan", "lava", "magma", "erupt"),
    "chess": ("chess", "pawn", "knight", "bishop", "checkmate", "rook"),
    "coffee": ("coffee", "caffeine", "espresso", "bean", "brew"),
    "bicycles": ("bicycl", "bike", "cycling", "pedal", "wheel"),
    "the moon": ("moon", "lunar", "orbit", "tide"),
    "honeybees": ("bee", "honey", "hive", "pollen", "pollinat"),
    "recycling": ("recycl", "waste", "plastic", "reuse", "trash"),
    "the internet": ("internet", "online", "web", "network", "computer"),
    "jazz music": ("jazz", "music", "improvis", "saxophone", "swing"),
    "rainforests": ("rainforest", "forest", "tree", "jungle", "amazon"),
    "sleep": ("sleep", "rest", "dream", "bed", "tired"),
    "vaccines": ("vaccin", "immun", "virus", "disease", "antibod"),
    "electric cars": ("electric", "car", "battery", "vehicle", "charg"),
    "gardening": ("garden", "plant", "soil", "seed", "flower"),
    "the ocean": ("ocean", "sea", "marine", "wave", "fish"),
    "friendship": ("friend", "trust", "loyal", "companion"),
    "the Roman Empire": ("roman", "rome", "empire", "emperor", "caesar"),
    "solar power": ("solar", "sun", "panel", "energy", "electric"),
    "dinosaurs": ("dinosaur", "fossil", "reptile", "extinct", "jurassic"),
    "mountains": ("mountain", "peak", "climb", "summit", "altitude"),
    "chocolate": ("chocolate", "cocoa", "cacao", "sweet"),
    "public libraries": ("librar", "book", "read", "librarian"),
    "the human heart": ("heart", "blood", "cardi", "pulse", "beat"),
    "earthquakes": ("earthquake", "quake", "seismic", "fault", "tremor"),
    "space exploration": ("space", "astronaut", "rocket", "planet", "mars", "nasa"),
    "healthy eating": ("eat", "food", "diet", "nutri", "vegetable", "fruit"),
    "the printing press": ("print", "press", "gutenberg", "book"),
    "climate change": ("climate", "warming", "carbon", "emission", "temperature"),
    "dogs": ("dog", "puppy", "pupp", "pet", "canine"),
    "cats": ("cat", "kitten", "feline", "pet"),
    "the violin": ("violin", "string", "bow", "music", "orchestra"),
    "bread baking": ("bread", "bak", "dough", "yeast", "flour", "oven"),
    "tea": ("tea", "leaf", "leaves", "brew", "cup"),
    "robots": ("robot", "machine", "automat", "sensor"),
    "deserts": ("desert", "sand", "dry", "cactus", "arid"),
    "the Olympic Games": ("olympic", "athlete", "medal", "sport", "games"),
    "birds": ("bird", "feather", "wing", "nest", "fly", "flight"),
    "money": ("money", "cash", "coin", "bank", "currenc", "pay"),
    "kindness": ("kind", "help", "care", "compassion"),
    "video games": ("game", "gaming", "player", "console"),
    "the human brain": ("brain", "neuron", "mind", "memory", "think"),
    "mathematics": ("math", "number", "equation", "algebra", "geometry"),
    "time management": ("time", "schedule", "plan", "priorit", "task"),
    "trains": ("train", "rail", "locomotive", "station", "track"),
    "the Amazon River": ("amazon", "river", "water", "brazil"),
    "ancient Egypt": ("egypt", "pharaoh", "pyramid", "nile", "ancient"),
    "artificial intelligence": ("artificial", "intelligen", "machine", "learn", "computer", "ai"),
    "swimming": ("swim", "pool", "water", "stroke"),
    "the telephone": ("telephone", "phone", "call", "bell"),
    "snow": ("snow", "winter", "cold", "ice", "flake"),
    "museums": ("museum", "art", "exhibit", "histor", "collection"),
    "rivers": ("river", "water", "stream", "flow"),
    "soccer": ("soccer", "football", "goal", "ball", "team", "player"),
    "the piano": ("piano", "key", "music", "play"),
    "wind energy": ("wind", "turbine", "energy", "power", "electric"),
    "pizza": ("pizza", "cheese", "dough", "tomato", "oven"),
    "camping": ("camp", "tent", "fire", "outdoor", "nature"),
    "learning a new language": ("language", "learn", "word", "speak", "vocabular", "grammar"),
}

TASK_TEMPLATES: tuple[str, ...] = (
    "Explain {topic} to a ten-year-old.",
    "Write a short blog post about {topic}.",
    "Describe the history of {topic}.",
    "List the main benefits of {topic}.",
    "Give some advice to someone who wants to learn about {topic}.",
    "Write a short story that involves {topic}.",
    "Write a letter to a friend about {topic}.",
    "Write a short poem about {topic}.",
    "Explain why {topic} matters today.",
    "Summarize what everyone should know about {topic}.",
    "Write a product description for a book about {topic}.",
    "Describe a common misconception about {topic}.",
    "Write a short speech about {topic}.",
    "Give tips for teaching {topic} to beginners.",
    "Write a news report about a new discovery related to {topic}.",
    "Compare two different opinions about {topic}.",
    "Describe how {topic} might change in the next fifty years.",
    "Write a short dialogue between two people discussing {topic}.",
    "Write an encyclopedia-style introduction to {topic}.",
    "Describe three surprising facts about {topic}.",
)

SPLITS: tuple[str, ...] = ("train", "test")
# The one seed that fixes which (template, topic) pairs belong to the test split; never change it, or test leaks.
SPLIT_SEED = 20250225
TEST_FRACTION = 0.2
# How many constraints a prompt carries, with probabilities.
CONSTRAINT_COUNTS = (1, 2, 3)
CONSTRAINT_COUNT_PROBS = (0.3, 0.4, 0.3)


@dataclass(frozen=True)
class PromptSpec:
    """One generated instruction: task template, topic and constraints; ``text`` is what the model sees."""

    template: int
    topic: str
    constraints: tuple[Constraint, ...]

    @cached_property
    def text(self) -> str:
        task = TASK_TEMPLATES[self.template].format(topic=self.topic)
        return " ".join([task, *(c.instruction() for c in self.constraints)])

    @property
    def topic_keywords(self) -> tuple[str, ...]:
        return TOPICS[self.topic]

    def addresses_task(self, response: str) -> bool:
        return addresses_task(response, self.text, self.topic_keywords)

    def satisfied(self, response: str) -> list[bool]:
        """Per constraint: satisfied *and* on task (an off-task answer satisfies nothing)."""
        if not self.addresses_task(response):
            return [False] * len(self.constraints)
        return [c.satisfied(response) for c in self.constraints]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.text,
            "template": self.template,
            "topic": self.topic,
            "constraints": [c.to_dict() for c in self.constraints],
        }


def split_tasks(split: str) -> list[tuple[int, str]]:
    """The (template index, topic) pairs of ``split``, fixed by :data:`SPLIT_SEED`."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    pairs = [(t, topic) for t in range(len(TASK_TEMPLATES)) for topic in TOPICS]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs))
    n_test = int(round(TEST_FRACTION * len(pairs)))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return [pairs[i] for i in sorted(chosen)]


def sample_constraints(rng: np.random.Generator) -> tuple[Constraint, ...]:
    """One to three constraints with pairwise disjoint groups, in a random order."""
    count = int(rng.choice(CONSTRAINT_COUNTS, p=CONSTRAINT_COUNT_PROBS))
    names = list(CONSTRAINT_KINDS)
    taken: set[str] = set()
    chosen: list[Constraint] = []
    for idx in rng.permutation(len(names)):
        kind = CONSTRAINT_KINDS[names[int(idx)]]
        if kind.groups & taken:
            continue
        params = kind.sample(rng)
        chosen.append(Constraint(kind.name, tuple((name, params[name]) for name in kind.fields)))
        taken |= kind.groups
        if len(chosen) == count:
            break
    return tuple(chosen)


def generate_prompts(n: int, split: str = "train", seed: int = 0) -> list[PromptSpec]:
    """``n`` prompts of ``split``, deterministic in (n, split, seed).

    Tasks are visited in a seeded random order without repetition until the split's tasks are used up (then the
    order starts again), so small sets cover many templates and topics.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    tasks = split_tasks(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    specs: list[PromptSpec] = []
    order: list[int] = []
    while len(specs) < n:
        if not order:
            order = [int(i) for i in rng.permutation(len(tasks))]
        template, topic = tasks[order.pop()]
        specs.append(PromptSpec(template, topic, sample_constraints(rng)))
    return specs


_TOPIC_ALTERNATION = "|".join(re.escape(t) for t in sorted(TOPICS, key=len, reverse=True))
_TEMPLATE_PATTERNS = tuple(
    re.compile(re.escape(t).replace(re.escape("{topic}"), f"(?P<topic>{_TOPIC_ALTERNATION})")) for t in TASK_TEMPLATES
)


@lru_cache(maxsize=65536)
def parse_prompt(text: str) -> PromptSpec:
    """Recover the spec of a generated prompt from its text; ``ValueError`` if the text was not generated here."""
    matches = ((i, p.match(text)) for i, p in enumerate(_TEMPLATE_PATTERNS))
    index, match = next(((i, m) for i, m in matches if m is not None), (-1, None))
    if match is None:
        raise ValueError(f"prompt: not a prompt of sgpo.evaluation (no task template matches): {text[:80]!r}")
    rest = text[match.end() :]
    found: list[tuple[int, Constraint]] = []
    for kind in CONSTRAINT_KINDS.values():
        for m in kind.pattern.finditer(rest):
            params = tuple((name, typ(m.group(name))) for name, typ in kind.fields.items())
            found.append((m.start(), Constraint(kind.name, params)))
    found.sort(key=lambda item: item[0])
    spec = PromptSpec(index, match.group("topic"), tuple(c for _, c in found))
    if spec.text != text:
        raise ValueError(f"prompt: constraints could not be parsed back exactly from {text!r}")
    return spec
