"""Corpora for the uses' tests: SciFact abstracts (read from ../shared, never copied here) or, where that
is missing, the standard library's docstrings; near-copies of five kinds; off-topic texts."""
import json
import os
import random
import re
from pathlib import Path

from semsearch.demo import stdlib_docstrings

_SCIFACT_PLACES = [os.environ.get("SEMSEARCH_SCIFACT", ""), Path(__file__).resolve().parents[2] / "shared/data/scifact",
                   "/work/shared/data/scifact"]


def abstracts(n: int) -> list[tuple[str, str]]:
    """(title, text) pairs: the first n SciFact abstracts, else docstrings."""
    for place in _SCIFACT_PLACES:
        corpus = Path(place) / "corpus.jsonl" if place else None
        if corpus is not None and corpus.exists():
            with corpus.open() as f:
                rows = [json.loads(line) for _, line in zip(range(n), f)]
            return [(r["title"], r["text"]) for r in rows]
    return [(d["name"], d["doc"]) for d in stdlib_docstrings(n)]


_SYNONYMS = {"increase": "rise", "increased": "raised", "decrease": "reduction", "decreased": "reduced",
             "associated": "linked", "significant": "notable", "significantly": "notably", "patients": "subjects",
             "study": "investigation", "results": "findings", "shows": "demonstrates", "show": "demonstrate",
             "however": "nevertheless", "use": "usage", "used": "employed", "risk": "likelihood",
             "the": "the", "effect": "impact", "effects": "impacts", "role": "function", "function": "role",
             "returns": "gives back", "return": "give back", "given": "supplied", "object": "instance"}


def near_copy(text: str, kind: str, rng: random.Random) -> str:
    """A near-copy of text: reworded (synonyms in about every fourth sentence), truncated (the last
    tenth dropped), case-changed, whitespace-mangled, or with a sentence added."""
    if kind == "reworded":
        sentences = re.split(r"(?<=[.!?])\s+", text)
        out = []
        for i, s in enumerate(sentences):
            if i % 4 == 1:
                s = " ".join(_SYNONYMS.get(w.lower(), w) for w in s.split())
            out.append(s)
        return " ".join(out)
    if kind == "truncated":
        return text[:int(len(text) * 0.9)]
    if kind == "case":
        return text.upper() if rng.random() < 0.5 else text.lower()
    if kind == "whitespace":
        return re.sub(r" ", lambda m: rng.choice(["  ", "\n", " \t ", " "]), text)
    if kind == "sentence":
        return text + " These findings were also presented at an international conference."
    raise ValueError(kind)


COPY_KINDS = ("reworded", "truncated", "case", "whitespace", "sentence")

OFF_TOPIC = [
    ("Lemon drizzle cake", "Cream the butter and caster sugar until pale, beat in the eggs, fold in self-raising flour "
     "and lemon zest. Bake for 45 minutes, then pour lemon juice and icing sugar over the warm cake."),
    ("Tomato soup", "Roast the tomatoes with garlic and olive oil, simmer with stock and a bay leaf, then blend until "
     "smooth. Season with salt and pepper and serve with crusty bread."),
    ("Pancakes", "Whisk flour, eggs and milk into a smooth batter, rest it for half an hour, then fry thin pancakes "
     "in a hot buttered pan. Serve with lemon and sugar."),
    ("Chocolate brownies", "Melt dark chocolate with butter, whisk in sugar and eggs, fold in flour and cocoa. Bake "
     "in a lined tin until the top is crackly and the middle still fudgy."),
    ("Guacamole", "Mash ripe avocados with lime juice, chopped onion, coriander and a little chilli. Season with salt "
     "and serve at once with tortilla chips."),
    ("Roast chicken", "Rub the chicken with butter, thyme and salt, stuff it with a lemon and roast it for an hour and "
     "a half, basting twice. Rest it before carving."),
    ("Banana bread", "Mash overripe bananas, mix with melted butter, sugar, an egg and flour, and bake in a loaf tin for "
     "an hour until a skewer comes out clean."),
    ("Risotto", "Fry the onion in butter, toast the arborio rice, add white wine and then hot stock a ladle at a time, "
     "stirring, until creamy. Finish with parmesan."),
    ("Apple crumble", "Slice cooking apples into a dish with sugar and cinnamon, rub butter into flour and oats for the "
     "topping, and bake until golden and bubbling."),
    ("Pizza dough", "Mix strong flour, yeast, salt and warm water, knead for ten minutes, let the dough rise, then "
     "stretch it thin, top it and bake it in the hottest oven."),
    ("Cup final report", "United scored twice in the second half to win the cup final two goals to one. The striker "
     "headed in a corner and the captain lifted the trophy in front of the fans."),
    ("Marathon report", "The defending champion broke away at the thirty kilometre mark and won the city marathon in "
     "two hours and five minutes, ahead of a pack of runners."),
    ("Tennis final", "She saved three match points in the third set tie-break and took the title after a final that "
     "lasted almost four hours on centre court."),
    ("Cricket test", "The home side declared on four hundred and twenty, then the spinners took seven wickets on the "
     "last day to win the test match by an innings."),
    ("Basketball game", "A buzzer-beating three-pointer gave the visitors a one-point win; their guard scored forty "
     "points and the crowd fell silent."),
    ("Cycling stage", "The sprinter won the flat stage in a bunch finish after the breakaway was caught two kilometres "
     "from the line, and kept the green jersey."),
    ("Rugby match", "A late try in the corner and a touchline conversion sealed the championship for the visitors, who "
     "had trailed at half time."),
    ("Formula one race", "Starting from pole, the driver led every lap, pitted once for hard tyres and won the grand "
     "prix by eight seconds from his team-mate."),
    ("Golf open", "A final-round sixty-six, with an eagle on the fifteenth hole, gave the young golfer a two-stroke "
     "victory at the open championship."),
    ("Ski race", "On a fast and icy course she won the downhill by a tenth of a second, her third World Cup victory of "
     "the winter."),
]
