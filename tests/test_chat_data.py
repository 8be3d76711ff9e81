"""chat_data: the SFT / RL conversations. Every conversation renders, with the mask on exactly the
assistant's text and calculator calls; every tool output is the engine's calculator's; the arithmetic
held-out set is disjoint from training by (a, op, b) and by wording; proportions are as configured and
stable for a seed; val shares nothing with train; the online loaders read the real formats from a
loopback HTTP server and fail clearly; and no offline conversation is an evaluation item (with a positive
control showing the check catches one)."""
from __future__ import annotations

import io
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopback import FaultyServer  # tests/ is on sys.path
from mini_nanochat import chat_data as cd
from mini_nanochat.engine import calculator


@pytest.fixture(scope="module")
def tok(base_dir):
    from mini_nanochat.stages import tok_train

    return tok_train.main(["--name", "chatdata-test", "--vocab-size", "512", "--max-chars", "300000"])


@pytest.fixture(scope="module")
def tok4k(base_dir):
    from mini_nanochat.stages import tok_train

    return tok_train.main(["--name", "chatdata-4k", "--vocab-size", "4096", "--max-chars", "2000000"])


@pytest.fixture(scope="module")
def mixture():
    return cd.offline_mixture("train", seed=0, size=3000)


@pytest.fixture(scope="module")
def val():
    return cd.offline_mixture("val", seed=0)


def expected_supervised(tok, conv) -> list[int]:
    """What the mask must select, built from the message parts: each assistant text, each python call in
    its python_start/end tokens, and <|assistant_end|>; never a user turn or a tool output."""
    sp = tok.encode_special
    out = []
    for m in conv["messages"]:
        if m["role"] != "assistant":
            continue
        parts = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        for p in parts:
            if p["type"] == "text":
                out += tok.encode(p["text"])
            elif p["type"] == "python":
                out += [sp("<|python_start|>")] + tok.encode(p["text"]) + [sp("<|python_end|>")]
        out.append(sp("<|assistant_end|>"))
    return out


def tool_pairs(conv):
    """(expression, output) of every calculator call in a conversation."""
    for m in conv["messages"]:
        if isinstance(m["content"], list):
            parts = m["content"]
            for p, q in zip(parts, parts[1:] + [None]):
                if p["type"] == "python":
                    assert q is not None and q["type"] == "python_output", "a call without its output"
                    yield p["text"], q["text"]


# ----------------------------------------------------------------------------------------------------
# rendering, masks, tool outputs


def test_every_conversation_renders_with_the_right_mask(tok, mixture, val):
    sp = tok.encode_special
    out_start, out_end = sp("<|output_start|>"), sp("<|output_end|>")
    rng = random.Random(3)
    extra = [cd.arithmetic_conversation(rng, held_out=True) for _ in range(100)]
    extra += [cd.identity_conversation(rng, held_out=True) for _ in range(20)]
    n_outputs = 0
    for conv in mixture + val + extra:
        assert set(conv) == {"messages", "source"}
        ids, mask = tok.render_conversation(conv, max_tokens=10**9)
        assert len(ids) == len(mask)
        assert [i for i, m in zip(ids, mask) if m] == expected_supervised(tok, conv), conv
        inside = False  # every tool output token, its delimiters included, has mask 0
        for i, m in zip(ids, mask):
            inside = inside or i == out_start
            if inside:
                assert m == 0
                n_outputs += i == out_start
            if i == out_end:
                inside = False
    assert n_outputs > 1000


def test_every_tool_output_is_the_calculators(mixture, val):
    rng = random.Random(4)
    convs = mixture + val + [cd.arithmetic_conversation(rng, held_out=True) for _ in range(200)]
    convs += [cd.spelling_conversation(rng, split) for split in ("train", "val") for _ in range(200)]
    pairs = [p for c in convs for p in tool_pairs(c)]
    assert len(pairs) > 1500
    for expr, output in pairs:
        assert calculator(expr) == output, expr
    assert calculator("12 / 4") == "3.0"  # the engine's float format, which the data keeps


def test_conversations_fit_256_tokens_with_a_4096_vocabulary(tok4k):
    # generated conversations: all of them, by a margin
    rng = random.Random(5)
    gen = [cd.arithmetic_conversation(rng) for _ in range(2000)] + [cd.identity_conversation(rng) for _ in range(500)]
    gen += [cd.spelling_conversation(rng) for _ in range(500)]
    assert max(len(tok4k.render_conversation(c, max_tokens=10**9)[0]) for c in gen) <= 200
    # human windows measured with the tokenizer: all fit, cut only between turns, user first (a sample of
    # the conversations: measuring all of them takes 4 s)
    raw = cd.raw_human_conversations()
    n = 0
    for source, key, turns in raw[::10]:
        for w in cd.windows(list(turns), 256, tok4k):
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(w)]
            assert len(tok4k.render_conversation(msgs, max_tokens=10**9)[0]) <= 256
            assert len(w) % 2 == 0 and all(t in turns for t in w)
            n += 1
    assert n > 1500
    # without a tokenizer (the default) the character estimate keeps all but a handful
    default = cd.human_conversations()
    convs = [c for s in default.values() for part in s.values() for c in part]
    over = sum(len(tok4k.render_conversation(c, max_tokens=10**9)[0]) > 256 for c in convs[::3])
    assert len(convs) > 20_000 and over / len(convs[::3]) < 0.001


def test_windows_cut_between_turns_only():
    turns = ["u1 " * 10, "a1 " * 10, "u2 " * 200, "a2", "u3", "a3", "u4", "a4", "dangling user turn"]
    got = cd.windows(turns, max_tokens=40)
    assert got == [[turns[0], turns[1]], ["u3", "a3", "u4", "a4"]]  # the 600-char pair is skipped whole
    assert cd.windows(["What is your name?", "Sarah", "nice", "thanks"], max_tokens=100) == []  # identity asked


# ----------------------------------------------------------------------------------------------------
# arithmetic: held out by (a, op, b) and by wording


def _skeleton(question: str) -> str:
    """The wording of a question: numbers, names and items replaced."""
    s = re.sub(r"\d[\d,]*", "#", question)
    for w in cd._NAMES + cd._ITEMS:
        s = s.replace(w, "_")
    return s.lower()


def test_arithmetic_held_out_is_disjoint_by_numbers_and_wording():
    rng = random.Random(0)
    train = [cd._arithmetic_item(rng, "train") for _ in range(4000)]
    held = [cd._arithmetic_item(rng, "held_out") for _ in range(1000)]
    valq = [cd._arithmetic_item(rng, "val") for _ in range(500)]
    key = lambda it: (it["a"], it["op"], it["b"])  # noqa: E731
    assert {key(i) for i in train}.isdisjoint({key(i) for i in held} | {key(i) for i in valq})
    assert {key(i) for i in held}.isdisjoint({key(i) for i in valq})
    assert all(cd.arithmetic_split(*key(i)) == s for s, items in (("train", train), ("held_out", held), ("val", valq))
               for i in items)
    # wordings: no held-out sentence (template or story) in training; every held-out question is in one,
    # around the operation words training uses
    held_templates = set(cd._HELD_OUT_TEMPLATES) | {q for v in cd._HELD_OUT_WORD.values() for q, _ in v}
    train_phrases = {p for v in cd._PHRASES.values() for p in v}
    assert held_templates.isdisjoint(cd._TEMPLATES)
    for it in train:
        assert it["template"] not in held_templates
    for it in held:
        assert it["template"] in held_templates and (it["phrase"] is None or it["phrase"] in train_phrases)
    # and as text: no held-out question reads like a training question with other numbers
    assert {_skeleton(i["question"]) for i in train}.isdisjoint({_skeleton(i["question"]) for i in held})
    assert len({_skeleton(i["question"]) for i in held}) > 50
    # every kind of question occurs: all four operators, 1 to 4 digits, word problems, held-out mix
    assert {i["op"] for i in held} == set("+-*/") and {i["kind"] for i in train} == {"word", "verb", "template"}
    assert {len(str(i["a"])) for i in train} == {1, 2, 3, 4}
    assert {i["kind"] for i in held} == {"word", "template"}


def test_arithmetic_question_api():
    rng = random.Random(7)
    for held_out in (False, True):
        for _ in range(300):
            q, expr, result = cd.arithmetic_question(rng, held_out=held_out)
            a, op, b = expr.split()
            assert cd.arithmetic_split(int(a), op, int(b)) == ("held_out" if held_out else "train")
            assert calculator(expr) == result and isinstance(q, str) and q
    conv = cd.arithmetic_conversation(random.Random(1))
    parts = conv["messages"][1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds[-3:] == ["python", "python_output", "text"] and kinds[:-3] in ([], ["text"])
    assert cd.check_arithmetic_answer(parts[-1]["text"], parts[-2]["text"])
    assert conv["source"] == "arithmetic"


def test_every_answer_sentence_states_the_result(mixture):
    for conv in mixture:
        if conv["source"] in ("arithmetic", "spelling"):
            for m in conv["messages"][1::2]:
                *_, out, final = m["content"]
                if conv["source"] == "arithmetic":
                    assert cd.check_arithmetic_answer(final["text"], out["text"]), final
                else:
                    assert out["text"] in final["text"]


@pytest.mark.parametrize("reply,result,ok", [
    ("17 plus 25 is 42.", "42", True), ("The answer is 1,200.", "1200", True), ("It is 3.", "3.0", True),
    ("It is 3.0", "3", True), ("4656 - 7 = 4649.", "4649", True), ("25 minus 345 is -320.", "-320", True),
    ("That's 4.25.", "4.25", True), ("about 14.29", "14.285714285714286", True), ("about 14.3", "14.285714285714286", False),
    ("17 + 25 = 43.", "42", False), ("42 is not it: 41.", "42", False), ("", "42", False), ("It is 320.", "-320", False),
])
def test_check_arithmetic_answer(reply, result, ok):
    assert cd.check_arithmetic_answer(reply, result) is ok


# ----------------------------------------------------------------------------------------------------
# identity, spelling


def test_identity_and_its_held_out_rephrasings():
    rng = random.Random(2)
    convs = [cd.identity_conversation(rng) for _ in range(500)]
    asked = {m["content"].lower().rstrip("?.!") for c in convs for m in c["messages"][::2]}
    assert not asked & {q.lower().rstrip("?.!") for q in cd._ID_HELD_OUT}
    assert len(asked) > 40
    assert all(any(cd.check_identity_answer(m["content"]) for m in c["messages"][1::2]) for c in convs
               if any(q in cd._ID_QUESTIONS["who"] for q in (m["content"] for m in c["messages"][::2])))
    held = cd.identity_conversation(rng, held_out=True)
    assert held["messages"][0]["content"] in cd._ID_HELD_OUT and cd.check_identity_answer(held["messages"][1]["content"])
    assert not cd.check_identity_answer("I am Sarah from Utah.")


def test_spelling_words_split_and_answers():
    assert {cd._word_split(w) for w in cd.WORDS} == {"train", "val"}
    rng = random.Random(1)
    for split in ("train", "val"):
        for _ in range(200):
            conv = cd.spelling_conversation(rng, split)
            word = re.search(r"'([a-z]+)'", conv["messages"][1]["content"][0]["text"]).group(1)
            assert cd._word_split(word) == split
    conv = cd.conversation("How many r's are in strawberry?", "3")
    assert conv == {"messages": [{"role": "user", "content": "How many r's are in strawberry?"},
                                 {"role": "assistant", "content": "3"}]}
    assert calculator("'strawberry'.count('r')") == "3"


# ----------------------------------------------------------------------------------------------------
# the offline mixture: proportions, stability, train/val disjointness


def test_proportions_are_as_configured_and_stable(mixture, capsys):
    props = cd.mixture_proportions(mixture)
    assert sum(n for n, _ in props.values()) == 3000 and abs(sum(s for _, s in props.values()) - 1) < 1e-9
    assert set(props) == set(cd.SHARES)
    for source, share in cd.SHARES.items():
        assert props[source][1] == pytest.approx(share, abs=1 / 3000), source
    assert list(props) == sorted(props, key=lambda s: -props[s][0])
    again = cd.offline_mixture("train", seed=0, size=3000)
    assert again == mixture  # the same seed gives the same conversations in the same order
    other = cd.offline_mixture("train", seed=1, size=3000)
    assert other != mixture and cd.mixture_proportions(other) == props
    print("mixture: " + ", ".join(f"{s} {n:,} ({share:.0%})" for s, (n, share) in props.items()))
    assert "arithmetic 1,350 (45%)" in capsys.readouterr().out
    # a human source that runs short gives its share to the other, then to the generated sources
    counts = cd._counts(1000, {"chitchat": 100, "chatterbot": 10})
    assert sum(counts.values()) == 1000 and counts["chitchat"] == 100 and counts["chatterbot"] == 10
    assert cd.offline_mixture("train", size=0) == [] and len(cd.offline_mixture("val", size=7)) == 7
    with pytest.raises(ValueError, match="split"):
        cd.offline_mixture("test")


def test_val_shares_nothing_with_train(mixture, val):
    assert len(val) == cd.DEFAULT_SIZE["val"]
    human = cd.human_conversations()
    for source in ("chitchat", "chatterbot"):
        train_h = {cd.content_hash(json.dumps(c["messages"])) for c in human[source]["train"]}
        val_h = {cd.content_hash(json.dumps(c["messages"])) for c in human[source]["val"]}
        assert train_h and val_h and train_h.isdisjoint(val_h)
        assert all(cd.content_hash(json.dumps(c["messages"])) in val_h for c in val if c["source"] == source)
    for conv in val:
        if conv["source"] == "arithmetic":
            for expr, _ in tool_pairs(conv):
                a, op, b = expr.split()
                assert cd.arithmetic_split(int(a), op, int(b)) == "val"
    for conv in mixture:
        if conv["source"] == "arithmetic":
            for expr, _ in tool_pairs(conv):
                a, op, b = expr.split()
                assert cd.arithmetic_split(int(a), op, int(b)) == "train"


# ----------------------------------------------------------------------------------------------------
# the online loaders, against a loopback HTTP server serving tiny files in the real formats


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


SMOLTALK = [
    [{"content": "Write a haiku about rain.", "role": "user"}, {"content": "Soft rain on the roof...", "role": "assistant"}],
    [{"content": "You are helpful.", "role": "system"}, {"content": "Hi", "role": "user"},
     {"content": "Hello!", "role": "assistant"}, {"content": "Bye", "role": "user"}, {"content": "Bye!", "role": "assistant"}],
    [{"content": "I start wrongly", "role": "assistant"}, {"content": "so I am skipped", "role": "user"}],
]
MMLU_AUX = {"question": ["Which gas do plants take in?", "2 + 2 = ?"], "subject": ["", ""],
            "choices": [["Oxygen", "Carbon dioxide", "Helium", "Neon"], ["3", "4", "5", "6"]], "answer": [1, 1]}
GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
               "in April and May.\n#### 72"},
    {"question": "Each pen costs $2. How much do 5 pens cost?",
     "answer": "5 pens cost 5*$2 = $<<5*$2=10>>10.\n#### 10"},
]


@pytest.fixture()
def online_server():
    files = {
        "smoltalk.parquet": _parquet(pa.table({"messages": SMOLTALK})),
        "mmlu_aux.parquet": _parquet(pa.table(MMLU_AUX)),
        "gsm8k_train.jsonl": "".join(json.dumps(r) + "\n" for r in GSM8K).encode(),
    }
    with FaultyServer(files) as server:
        yield server


def _sources(server):
    return {"smoltalk": [f"{server.url}/smoltalk.parquet"], "mmlu_aux": [f"{server.url}/mmlu_aux.parquet"],
            "gsm8k": [f"{server.url}/gsm8k_train.jsonl"]}


def test_online_mixture_reads_the_real_formats(tmp_path, online_server, tok):
    from mini_nanochat.chat_eval import render_mc

    convs = cd.online_mixture(tmp_path, sources=_sources(online_server), retries=0)
    props = cd.mixture_proportions(convs)
    assert props == {"mmlu_aux": (6, 6 / 16), "gsm8k": (8, 8 / 16), "smoltalk": (2, 2 / 16)}  # x3, x4, bad row left out
    smol = [c for c in convs if c["source"] == "smoltalk"]
    assert smol[1]["messages"][0] == {"role": "system", "content": "You are helpful."}
    mmlu = [c for c in convs if c["source"] == "mmlu_aux"][0]
    assert mmlu["messages"] == [{"role": "user", "content": render_mc("Which gas do plants take in?", list("ABCD"),
                                                                      MMLU_AUX["choices"][0])},
                                {"role": "assistant", "content": "B"}]
    gsm = [c for c in convs if c["source"] == "gsm8k"]
    parts = gsm[0]["messages"][1]["content"]
    assert [(p["type"], p["text"]) for p in parts] == [
        ("text", "Natalia sold 48/2 = "), ("python", "48/2"), ("python_output", "24.0"),
        ("text", "24 clips in May.\nNatalia sold 48+24 = "), ("python", "48+24"), ("python_output", "72"),
        ("text", "72 clips altogether in April and May.\n#### 72")]
    # "5*$2" is no expression our calculator takes: the call is dropped, the text stays whole
    assert gsm[1]["messages"][1]["content"] == [{"type": "text", "text": "5 pens cost 5*$2 = $10.\n#### 10"}]
    for conv in convs:
        tok.render_conversation(conv)
        for expr, output in tool_pairs(conv):
            assert calculator(expr) == output
    # downloaded once: a second call reads the files already there
    n = len(online_server.log)
    assert cd.online_mixture(tmp_path, sources=_sources(online_server)) == convs and len(online_server.log) == n
    assert (tmp_path / "chat_data" / "gsm8k" / "gsm8k_train.jsonl").is_file()
    assert len(cd.online_mixture(tmp_path, sources=_sources(online_server), smoltalk_limit=1,
                                 mmlu_epochs=1, gsm8k_epochs=0)) == 3


def test_online_mixture_failures_are_clear(tmp_path, online_server):
    srcs = _sources(online_server)
    with pytest.raises(cd.ChatDataError, match=r"online mixture, smoltalk: .*missing\.parquet: HTTP 404"):
        cd.online_mixture(tmp_path / "a", sources={**srcs, "smoltalk": [f"{online_server.url}/missing.parquet"]},
                          retries=0)
    online_server.faults["gsm8k_train.jsonl"] = ["drop", "drop"]  # the connection drops partway, both attempts
    with pytest.raises(cd.ChatDataError, match=r"online mixture, gsm8k: giving up on .*gsm8k_train\.jsonl after 2 "
                                               r"attempts; last error: connection closed after \d+ of \d+ bytes"):
        cd.online_mixture(tmp_path / "b", sources=srcs, retries=1, backoff=0.01)
    online_server.faults.clear()  # a file cut short at its source: complete download, invalid last line
    online_server.files["gsm8k_train.jsonl"] = online_server.files["gsm8k_train.jsonl"][:-40]
    with pytest.raises(cd.ChatDataError, match=r"gsm8k: .*failed verification \(corrupt\)"):
        cd.online_mixture(tmp_path / "c", sources=srcs, retries=0)
    assert not (tmp_path / "c" / "chat_data" / "gsm8k" / "gsm8k_train.jsonl").exists()


def test_row_converters_refuse_malformed_rows():
    assert cd.smoltalk_conversation({"messages": []}) is None
    assert cd.smoltalk_conversation({"messages": [{"role": "user", "content": "only me"}]}) is None
    assert cd.mmlu_conversation({"question": "q", "choices": ["a", "b"], "answer": 5}) is None
    assert cd.mmlu_conversation({"train": {"question": "q", "choices": ["a", "b"], "answer": 0}})["messages"][1] == \
        {"role": "assistant", "content": "A"}  # the "auxiliary_train" config nests its rows under "train"
    assert cd.gsm8k_conversation({"question": 1, "answer": "x"}) is None


# ----------------------------------------------------------------------------------------------------
# contamination: no offline conversation is an evaluation item


@pytest.fixture(scope="module")
def eval_hashes():
    from mini_nanochat.tasks import TaskDataError

    try:
        return cd.eval_hashes()
    except TaskDataError as e:
        pytest.skip(f"evaluation items not installed, contamination not checked: {e}")


def test_no_offline_conversation_is_an_eval_item(eval_hashes, mixture, val):
    assert len(eval_hashes) > 100_000
    human = cd.human_conversations()
    convs = [c for s in human.values() for part in s.values() for c in part]  # every window, not only a sample
    rng = random.Random(11)
    convs += mixture + val + [cd.arithmetic_conversation(rng) for _ in range(3000)]
    convs += [cd.arithmetic_conversation(rng, held_out=True) for _ in range(2000)]
    convs += [cd.identity_conversation(rng, held_out=True) for _ in range(100)]
    hits = cd.find_contamination(convs, eval_hashes)
    # a new hit: add its content_hash to chat_data.EVAL_BLOCKLIST (the window holding it is then left out)
    assert hits == [], [(s, t, x[:80], cd.content_hash(x)) for s, t, x in hits[:20]]


def test_the_contamination_check_catches_an_injected_eval_item(eval_hashes):
    from mini_nanochat.tasks import gsm8k, mmlu

    question = gsm8k.load()[0]["question"]
    mcq = mmlu.load()[100]["question"]
    injected = [
        cd.conversation("  " + question.upper().replace(" ", "\n  ") + "  ", "18", source="chitchat"),
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": [{"type": "text", "text": mcq.rstrip("?.") + "?"}]}],
         "source": "chatterbot"},
    ]
    hits = cd.find_contamination(injected, eval_hashes)
    assert [(s, t) for s, t, _ in hits] == [("chitchat", "GSM8K"), ("chatterbot", "MMLU"), ("chatterbot", "MMLU")]
    # and the blocklist keeps the human texts that are MMLU questions out of the mixture
    assert all(h in eval_hashes for h in cd.EVAL_BLOCKLIST)


def test_missing_chat_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "chitchat_dataset" else real(name, *a))
    with pytest.raises(cd.ChatDataError, match=r"pip install --no-deps chitchat-dataset==0\.9\.0"):
        cd.raw_human_conversations.__wrapped__()  # the uncached function: it looks for the package again


def test_doctests():
    import doctest

    assert doctest.testmod(cd).failed == 0
