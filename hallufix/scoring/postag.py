"""A small rule-based part-of-speech guesser for captions, standing in for NLTK's averaged-perceptron tagger.

The tagger model is not installable offline, and CHAIR's nltk variant only uses the tag to choose the WordNet
part of speech for lemmatisation (J -> adjective, V -> verb, N -> noun, R -> adverb, anything else -> noun). So
this guesser returns those four WordNet classes directly, deciding only what changes a lemma:

* forms of *be*, *have* and *do* -> verb (``has`` -> have, not the noun reading ``ha``);
* ``-ing`` words -> verb (``skiing`` -> ski, ``sitting`` -> sit, ``a man training a dog`` -> train) unless a
  determiner or possessive precedes them (alone or with an adjective: ``my last training``), they are common
  nouns (``building``, ``ceiling``, ...), or they are WordNet nouns that open a sentence before a content word
  (``training data`` stays ``training``, not the COCO class ``train``);
* ``-ed`` words -> verb (``tied`` -> tie, ``seated on`` -> seat, ``artwork titled`` -> title) unless a determiner
  precedes them, or they are WordNet adjectives before a content word after an adjective, a number, a
  preposition or a conjunction (then adjective: ``a potted plant``, ``green potted plant``, ``of potted plants``);
* irregular verb forms in WordNet's ``verb.exc`` (``sat``, ``held``) -> verb unless a determiner or
  preposition precedes them (``on the ground`` stays a noun);
* ``-ly`` words that WordNet lists as adverbs -> adverb;
* ``-er`` / ``-est`` words that are no noun but an adjective's comparative -> adjective (``largest`` -> large);
* ``-s`` words that are no noun form but a verb's third person -> verb (``depicts`` -> depict);
* everything else -> noun (plural nouns and third-person verbs give the same lemma in nearly all cases).
"""
from __future__ import annotations

from hallufix.scoring.wordnet import WordNet

AUXILIARIES = frozenset({"is", "are", "was", "were", "am", "be", "been", "being", "'s", "'re", "'m",
                         "has", "have", "had", "having", "do", "does", "did", "'ve", "'d"})
DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "his", "her", "its", "their", "my",
                         "our", "your", "some", "any", "each", "every", "no", "another", "'s"})
PRONOUNS = frozenset({"it", "he", "she", "they", "we", "you", "i", "him", "them", "us", "me", "itself", "himself",
                      "herself", "themselves", "there", "here"})
PREPOSITIONS = frozenset({"on", "in", "at", "of", "to", "from", "by", "with", "into", "onto", "over", "under",
                          "near", "behind", "beside", "across", "through", "above", "below", "around", "for", "next",
                          "alongside", "against", "down", "up", "out", "together", "inside", "outside", "between",
                          "along", "off", "toward", "towards", "while", "and", "or", "as", "like", "atop", "upon"})
ING_NOUNS = frozenset({"building", "ceiling", "clothing", "painting", "morning", "evening", "wedding", "thing",
                       "something", "nothing", "anything", "everything", "ring", "king", "string", "spring",
                       "wing", "swing", "railing", "icing", "frosting", "topping", "stuffing", "pudding",
                       "bedding", "awning", "sibling", "duckling", "lighting", "sling", "ping", "siding",
                       "seating", "paneling", "opening", "setting", "landing", "parking", "dressing"})


def _content(word: str) -> bool:
    """A word that can follow a modifier: alphabetic, no determiner, pronoun, preposition or auxiliary."""
    return word.isalpha() and word not in DETERMINERS and word not in PRONOUNS and word not in PREPOSITIONS \
        and word not in AUXILIARIES


def wordnet_pos(tokens: list[str], wn: WordNet) -> list[str]:
    """One WordNet part of speech (``n``, ``v``, ``a``, ``r``) per token of a lower-cased caption."""
    out = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if tok in AUXILIARIES and tok != "'s":
            pos = "v"
        elif tok.endswith("ing") and len(tok) > 4 and tok.isalpha():
            prev2 = tokens[i - 2] if i > 1 else ""
            after_adjective = prev2 in DETERMINERS and prev in wn.lemmas["a"]
            noun_before = tok in wn.lemmas["n"] and (not prev or not prev.isalpha()) and _content(nxt)
            pos = "n" if prev in DETERMINERS or tok in ING_NOUNS or noun_before or after_adjective else "v"
        elif tok.endswith("ed") and len(tok) > 3 and tok.isalpha():
            modifier = prev in wn.lemmas["a"] or prev in PREPOSITIONS or prev.isdigit()
            pos = "a" if prev in DETERMINERS or (tok in wn.lemmas["a"] and modifier and _content(nxt)) else "v"
        elif tok in wn.exceptions["v"] and tok not in wn.exceptions["n"]:
            pos = "n" if prev in DETERMINERS or prev in PREPOSITIONS else "v"
        elif tok.endswith("ly") and tok in wn.lemmas["r"]:
            pos = "r"
        elif tok.endswith(("er", "est")) and tok not in wn.lemmas["n"] and wn.lemmatize(tok, "a") != tok:
            pos = "a"
        elif tok.endswith("s") and tok.isalpha() and not wn.morphy(tok, "n") and wn.morphy(tok, "v"):
            pos = "v"
        else:
            pos = "n"
        out.append(pos)
    return out
