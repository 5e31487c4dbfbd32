"""A small deterministic English demo corpus for token_freq.py on the planted model (offline).

Why generated rather than downloaded: the planted demo must run without network access, and its
frequency table should make the category words of :data:`common.prompts.CATEGORIES` frequent
tokens (as common words like " Monday" or " red" are in WikiText), so that "the N most frequent
tokens" analyses on the planted model contain the planted categories.

Construction: seeded random sentences from fixed templates. About a third are ordinary English
filler sentences (no category slots), the rest are templates that name 1-3 words from one or two
categories in context ("On Monday and Friday the market was closed."). Every category word is
used with a leading space, exactly the GPT-2 token the categories are defined by. The default
size is about 110 KB (well under the repo's 200 KB budget for demo data), a few seconds of
tokenisation at most.
"""

from __future__ import annotations

import numpy as np

from common.prompts import CATEGORIES

# Ordinary sentences, so that function words and punctuation are frequent too (as in real text).
FILLER = [
    "The committee published its report after a long public consultation.",
    "Most of the early buildings in the town were made of local stone.",
    "The song was released as a single and reached the top of the chart.",
    "He later moved to the capital, where he worked as a teacher for many years.",
    "The road follows the valley for several miles before it crosses the river.",
    "Critics praised the film for its music, although the plot was thought to be weak.",
    "The species is found in forests at low altitude across the region.",
    "After the war the company returned to making trains and farm machinery.",
    "A new station was opened in the centre of the city to serve the growing suburbs.",
    "The team finished the season in third place, its best result for a decade.",
    "Construction of the bridge began in the spring and took almost three years.",
    "The album was recorded in a small studio over the course of a few weeks.",
    "Historians still disagree about the causes of the rebellion.",
    "The museum holds a large collection of paintings, coins and early maps.",
    "Its population has grown steadily since the railway reached the area.",
    "The ship was damaged in a storm and had to return to port for repairs.",
    "The novel tells the story of a family over three generations.",
    "In the final chapter the author returns to the themes of the opening.",
    "The game received mixed reviews, with praise for its design but criticism of its length.",
    "The church was rebuilt in the nineteenth century after a fire destroyed the roof.",
    "Members of the council are elected every four years by the residents.",
    "The school was founded by a group of local merchants.",
    "The results of the study were published in a scientific journal.",
    "The village lies on the northern edge of the national park.",
]

# Templates: {category} is replaced by a word of that category (leading space added by the slot).
TEMPLATES = [
    "On{days} and{days} the market in the old town was closed.",
    "The meeting was moved from{days} to{days} because of the holiday.",
    "The festival is held every year in{months}, and the rains come in{months}.",
    "The album was released in{months}{years} and again in{months}{years}.",
    "The bridge was completed in{years}, and it was repaired in{years}.",
    "The flag shows a{colours} star on a{colours} field with a{colours} border.",
    "The house was painted{colours} and the door was{colours}.",
    "In the story a{animals} and a{animals} travel together to find a{animals}.",
    "The farm kept a{animals}, a{animals} and a few chickens.",
    "The team played matches in{countries},{countries} and{countries} that year.",
    "Trade between{countries} and{countries} grew quickly after the treaty.",
    "The report was written by{names} and{names}, with help from{names}.",
    "{names} met{names} at the station before the train left.",
    "There were{numbers} players on the field and{numbers} on the bench.",
    "She bought{numbers} tickets and gave{numbers} of them away.",
    "The children like to{verbs} and to{verbs} in the park after school.",
    "They wanted to{verbs} but had to{verbs} instead.",
    "It was true{logical} false,{logical} nobody could tell.",
    "The rule applies{logical} the light is red{logical} the road is wet.",
    "The market sold{fruits},{fruits} and{fruits} from the nearby farms.",
    "She made a cake with{fruits} and{fruits}.",
    "The soldiers felt{emotions} and{emotions} before the battle.",
    "He was{emotions} at first but later became{emotions}.",
    "The forecast warned of{weather} in the morning and{weather} at night.",
    "Heavy{weather} and{weather} closed the mountain road.",
    "When{pronouns} arrived,{pronouns} told{pronouns} the news.",
    "After the game{pronouns} said that{pronouns} would return.",
]


def demo_lines(n_sentences: int = 1800, seed: int = 0) -> list[str]:
    """Seeded corpus lines, each ending in a newline; lines hold 1-4 sentences."""
    import re

    rng = np.random.default_rng(seed)
    slot = re.compile(r"\{(\w+)\}")

    def fill(template: str) -> str:
        return slot.sub(lambda m: " " + str(rng.choice(CATEGORIES[m.group(1)])), template)

    sentences = []
    for _ in range(n_sentences):
        if rng.random() < 0.3:
            sentences.append(str(rng.choice(FILLER)))
        else:
            sentences.append(fill(str(rng.choice(TEMPLATES))).lstrip())
    lines, i = [], 0
    while i < len(sentences):
        k = int(rng.integers(1, 5))
        lines.append(" ".join(sentences[i : i + k]) + "\n")
        i += k
    return lines


def demo_text(n_sentences: int = 1800, seed: int = 0) -> str:
    return "".join(demo_lines(n_sentences, seed))
