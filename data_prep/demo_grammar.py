"""A small English-German-Spanish phrase grammar for the demo corpus.

Each sentence is ``SUBJECT [do/does not] VERB OBJECT [ADVERBIAL]`` in English, generated
together with its German and Spanish translation. The grammar handles the agreement that these
patterns need:

- verbs agree with the subject in person and number (tables for five persons, since "you" is
  always the singular ``du`` / ``tú``);
- German objects take the accusative, with article and adjective endings for definite
  (der-word) and indefinite or possessive (ein-word) determiners;
- Spanish determiners and adjectives agree in gender and number, adjectives follow the noun;
- English chooses "a" or "an" from the next word;
- German negation is ``kein`` for an indefinite object, otherwise ``nicht``, placed after the
  object and a time adverbial but before a place adverbial; a time adverbial comes before an
  indefinite German object ("Ich kaufe heute einen Apfel").

Verbs only take objects of matching kinds (one eats food and reads readable things), so the
sentences make sense. The English vocabulary has about 75 words, which a small speech
translation model learns in minutes, and there are millions of distinct sentences, so held-out
sentences are new combinations of known words.
"""

import random
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

LANGUAGES = ("en", "de", "es")

# Persons in the order of the conjugation tables.
PERSONS = ("1sg", "2sg", "3sg", "1pl", "3pl")


@dataclass(frozen=True)
class Sentence:
    """One sentence of the grammar in the three languages."""

    en: str
    de: str
    es: str

    def text(self, language: str) -> str:
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}: the demo grammar has {', '.join(LANGUAGES)}")
        return getattr(self, language)


@dataclass(frozen=True)
class Subject:
    en: str
    de: str
    es: str
    person: str


@dataclass(frozen=True)
class Verb:
    en_base: str
    en_third: str
    de: Tuple[str, str, str, str, str]
    es: Tuple[str, str, str, str, str]
    object_kinds: FrozenSet[str]


@dataclass(frozen=True)
class Noun:
    """An object noun; ``de_gender`` is m, f or n and ``es_gender`` is m or f."""

    en: str
    en_plural: Optional[str]
    de: str
    de_plural: Optional[str]
    de_gender: str
    es: str
    es_plural: Optional[str]
    es_gender: str
    kinds: FrozenSet[str]
    countable: bool = True
    takes_adjectives: bool = True


@dataclass(frozen=True)
class Adjective:
    """An adjective with its Spanish masculine and feminine singular forms (the plural adds -s or -es)."""

    en: str
    de: str
    es_masculine: str
    es_feminine: str
    kinds: FrozenSet[str]

    def spanish(self, gender: str, plural: bool) -> str:
        base = self.es_masculine if gender == "m" else self.es_feminine
        if not plural:
            return base
        return base + ("es" if base[-1] not in "aeiou" else "s")


@dataclass(frozen=True)
class Adverbial:
    en: str
    de: str
    es: str
    kind: str  # "time" or "place"


PRONOUNS = (
    Subject("I", "ich", "yo", "1sg"),
    Subject("you", "du", "tú", "2sg"),
    Subject("he", "er", "él", "3sg"),
    Subject("she", "sie", "ella", "3sg"),
    Subject("we", "wir", "nosotros", "1pl"),
    Subject("they", "sie", "ellos", "3pl"),
)

NOUN_SUBJECTS = (
    Subject("the man", "der Mann", "el hombre", "3sg"),
    Subject("the woman", "die Frau", "la mujer", "3sg"),
    Subject("the child", "das Kind", "el niño", "3sg"),
    Subject("the children", "die Kinder", "los niños", "3pl"),
    Subject("my brother", "mein Bruder", "mi hermano", "3sg"),
    Subject("my sister", "meine Schwester", "mi hermana", "3sg"),
    Subject("my friends", "meine Freunde", "mis amigos", "3pl"),
)

SUBJECTS = PRONOUNS + NOUN_SUBJECTS

THING, READABLE, FOOD, DRINK = "thing", "readable", "food", "drink"

VERBS = (
    Verb("see", "sees", ("sehe", "siehst", "sieht", "sehen", "sehen"),
         ("veo", "ves", "ve", "vemos", "ven"), frozenset({THING, READABLE, FOOD})),
    Verb("buy", "buys", ("kaufe", "kaufst", "kauft", "kaufen", "kaufen"),
         ("compro", "compras", "compra", "compramos", "compran"), frozenset({THING, READABLE, FOOD, DRINK})),
    Verb("want", "wants", ("will", "willst", "will", "wollen", "wollen"),
         ("quiero", "quieres", "quiere", "queremos", "quieren"), frozenset({THING, READABLE, FOOD, DRINK})),
    Verb("need", "needs", ("brauche", "brauchst", "braucht", "brauchen", "brauchen"),
         ("necesito", "necesitas", "necesita", "necesitamos", "necesitan"), frozenset({THING, READABLE, FOOD, DRINK})),
    Verb("eat", "eats", ("esse", "isst", "isst", "essen", "essen"),
         ("como", "comes", "come", "comemos", "comen"), frozenset({FOOD})),
    Verb("drink", "drinks", ("trinke", "trinkst", "trinkt", "trinken", "trinken"),
         ("bebo", "bebes", "bebe", "bebemos", "beben"), frozenset({DRINK})),
    Verb("read", "reads", ("lese", "liest", "liest", "lesen", "lesen"),
         ("leo", "lees", "lee", "leemos", "leen"), frozenset({READABLE})),
    Verb("find", "finds", ("finde", "findest", "findet", "finden", "finden"),
         ("encuentro", "encuentras", "encuentra", "encontramos", "encuentran"), frozenset({THING, READABLE})),
)

NOUNS = (
    Noun("book", "books", "Buch", "Bücher", "n", "libro", "libros", "m", frozenset({READABLE})),
    Noun("letter", "letters", "Brief", "Briefe", "m", "carta", "cartas", "f", frozenset({READABLE})),
    Noun("newspaper", "newspapers", "Zeitung", "Zeitungen", "f", "periódico", "periódicos", "m",
         frozenset({READABLE})),
    Noun("car", "cars", "Auto", "Autos", "n", "coche", "coches", "m", frozenset({THING})),
    Noun("key", "keys", "Schlüssel", "Schlüssel", "m", "llave", "llaves", "f", frozenset({THING})),
    Noun("cup", "cups", "Tasse", "Tassen", "f", "taza", "tazas", "f", frozenset({THING})),
    Noun("apple", "apples", "Apfel", "Äpfel", "m", "manzana", "manzanas", "f", frozenset({FOOD})),
    Noun("cake", "cakes", "Kuchen", "Kuchen", "m", "pastel", "pasteles", "m", frozenset({FOOD})),
    Noun("bread", None, "Brot", None, "n", "pan", None, "m", frozenset({FOOD}), countable=False,
         takes_adjectives=False),
    Noun("coffee", None, "Kaffee", None, "m", "café", None, "m", frozenset({DRINK})),
    Noun("tea", None, "Tee", None, "m", "té", None, "m", frozenset({DRINK})),
    Noun("milk", None, "Milch", None, "f", "leche", None, "f", frozenset({DRINK}), countable=False),
)

ADJECTIVES = (
    Adjective("red", "rot", "rojo", "roja", frozenset({THING, READABLE})),
    Adjective("new", "neu", "nuevo", "nueva", frozenset({THING, READABLE})),
    Adjective("old", "alt", "viejo", "vieja", frozenset({THING, READABLE})),
    Adjective("big", "groß", "grande", "grande", frozenset({THING, READABLE, FOOD})),
    Adjective("small", "klein", "pequeño", "pequeña", frozenset({THING, READABLE, FOOD})),
    Adjective("hot", "heiß", "caliente", "caliente", frozenset({DRINK})),
)

ADVERBIALS = (
    Adverbial("today", "heute", "hoy", "time"),
    Adverbial("now", "jetzt", "ahora", "time"),
    Adverbial("every day", "jeden Tag", "cada día", "time"),
    Adverbial("in the morning", "am Morgen", "por la mañana", "time"),
    Adverbial("in the evening", "am Abend", "por la tarde", "time"),
    Adverbial("at home", "zu Hause", "en casa", "place"),
    Adverbial("in the city", "in der Stadt", "en la ciudad", "place"),
)

# German accusative determiners by gender ("p" is plural); "kein" is the negated indefinite.
GERMAN_ACCUSATIVE: Dict[str, Dict[str, str]] = {
    "the": {"m": "den", "f": "die", "n": "das", "p": "die"},
    "a": {"m": "einen", "f": "eine", "n": "ein"},
    "no": {"m": "keinen", "f": "keine", "n": "kein", "p": "keine"},
    "my": {"m": "meinen", "f": "meine", "n": "mein", "p": "meine"},
}

# Adjective endings in the accusative after a der-word ("the") and after an ein-word (a, no, my).
GERMAN_ADJECTIVE_ENDING = {
    "der": {"m": "en", "f": "e", "n": "e", "p": "en"},
    "ein": {"m": "en", "f": "e", "n": "es", "p": "en"},
}

SPANISH_DETERMINERS = {
    "the": {("m", False): "el", ("f", False): "la", ("m", True): "los", ("f", True): "las"},
    "a": {("m", False): "un", ("f", False): "una"},
    "my": {("m", False): "mi", ("f", False): "mi", ("m", True): "mis", ("f", True): "mis"},
}


@dataclass(frozen=True)
class ObjectPhrase:
    noun: Noun
    determiner: str  # "the", "a" or "my"
    plural: bool
    adjective: Optional[Adjective]

    def english(self) -> str:
        noun = self.noun.en_plural if self.plural else self.noun.en
        words = [self.adjective.en, noun] if self.adjective else [noun]
        if self.determiner == "a":
            article = "an" if words[0][0] in "aeiou" else "a"
            return " ".join([article] + words)
        return " ".join([self.determiner] + words)

    def german(self, negated: bool) -> str:
        gender = "p" if self.plural else self.noun.de_gender
        determiner = "no" if (negated and self.determiner == "a") else self.determiner
        article = GERMAN_ACCUSATIVE[determiner][gender]
        noun = self.noun.de_plural if self.plural else self.noun.de
        if self.adjective is None:
            return f"{article} {noun}"
        declension = "der" if determiner == "the" else "ein"
        adjective = self.adjective.de + GERMAN_ADJECTIVE_ENDING[declension][gender]
        return f"{article} {adjective} {noun}"

    def spanish(self) -> str:
        gender = self.noun.es_gender
        article = SPANISH_DETERMINERS[self.determiner][(gender, self.plural)]
        noun = self.noun.es_plural if self.plural else self.noun.es
        words = [article, noun]
        if self.adjective is not None:
            words.append(self.adjective.spanish(gender, self.plural))
        return " ".join(words)


def _capitalize(text: str) -> str:
    return text[0].upper() + text[1:]


def _sample_object(rng: random.Random, verb: Verb) -> ObjectPhrase:
    nouns = [noun for noun in NOUNS if noun.kinds & verb.object_kinds]
    noun = rng.choice(nouns)
    plural = noun.en_plural is not None and rng.random() < 0.3
    determiners = ["the", "my"]
    if noun.countable and not plural:
        determiners.append("a")
    determiner = rng.choice(determiners)
    adjectives = [adjective for adjective in ADJECTIVES if adjective.kinds & noun.kinds and noun.takes_adjectives]
    adjective = rng.choice(adjectives) if adjectives and rng.random() < 0.4 else None
    return ObjectPhrase(noun, determiner, plural, adjective)


def realize(subject: Subject, verb: Verb, obj: ObjectPhrase, negated: bool,
            adverbial: Optional[Adverbial]) -> Sentence:
    """Build the three sentences for one choice of phrases."""
    person = PERSONS.index(subject.person)

    english_verb = verb.en_third if subject.person == "3sg" else verb.en_base
    if negated:
        auxiliary = "does" if subject.person == "3sg" else "do"
        english_verb = f"{auxiliary} not {verb.en_base}"
    english = [subject.en, english_verb, obj.english()]
    if adverbial is not None:
        english.append(adverbial.en)

    german_object = obj.german(negated)
    german = [subject.de, verb.de[person]]
    indefinite = obj.determiner == "a"
    if adverbial is not None and adverbial.kind == "time" and indefinite:
        german += [adverbial.de, german_object]
    else:
        german.append(german_object)
        if adverbial is not None and adverbial.kind == "time":
            german.append(adverbial.de)
    if negated and not indefinite:
        german.append("nicht")
    if adverbial is not None and adverbial.kind == "place":
        german.append(adverbial.de)

    spanish = [subject.es]
    if negated:
        spanish.append("no")
    spanish += [verb.es[person], obj.spanish()]
    if adverbial is not None:
        spanish.append(adverbial.es)

    return Sentence(
        en=_capitalize(" ".join(english)) + ".",
        de=_capitalize(" ".join(german)) + ".",
        es=_capitalize(" ".join(spanish)) + ".",
    )


def sample_sentence(rng: random.Random) -> Sentence:
    """Draw one sentence; the same ``rng`` state gives the same sentence."""
    subject = rng.choice(SUBJECTS)
    verb = rng.choice(VERBS)
    obj = _sample_object(rng, verb)
    negated = rng.random() < 0.25
    adverbial = rng.choice(ADVERBIALS) if rng.random() < 0.6 else None
    return realize(subject, verb, obj, negated, adverbial)


def words(text: str) -> List[str]:
    """Split a sentence into lowercase words without punctuation."""
    return text.lower().rstrip(".").split()


def english_vocabulary() -> FrozenSet[str]:
    """Return every English word that the grammar can produce."""
    vocabulary = set()
    for subject in SUBJECTS:
        vocabulary.update(words(subject.en))
    for verb in VERBS:
        vocabulary.update([verb.en_base, verb.en_third])
    for noun in NOUNS:
        vocabulary.update(word for word in (noun.en, noun.en_plural) if word)
    for adjective in ADJECTIVES:
        vocabulary.add(adjective.en)
    for adverbial in ADVERBIALS:
        vocabulary.update(words(adverbial.en))
    vocabulary.update(["the", "a", "an", "my", "do", "does", "not"])
    return frozenset(vocabulary)
