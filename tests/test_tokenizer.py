"""Tokenizers of the chat format: the byte-level one and a real `tokenizers` BPE file."""
import json
import re
from pathlib import Path

import pytest

from v4lab.chat import (ASSISTANT, BOS, DSML, EOS, INVOKE_OPEN, TASK_TOKENS, TASKS, THINK_CLOSE,
                        THINK_OPEN, encode_messages, render)
from v4lab.tokenizer import (CHAT_TOKENS, SPECIAL_STRINGS, ByteTokenizer, check_chat_tokens,
                             load_tokenizer)

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Météo d'une ville — 天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

CONVERSATIONS = [
    ([{"role": "user", "content": "Hi"}], {}),
    ([{"role": "system", "content": "Réponds en français."},
      {"role": "user", "content": "Bonjour ! 😀 naïve café, 中文, ｜pipe▁ <pad> \x00 end"},
      {"role": "assistant", "reasoning_content": "Salutations.", "content": "Salut ✨"},
      {"role": "user", "content": "Encore?"}], {"reasoning_effort": "max"}),
    ([{"role": "user", "content": "Weather in Zürich?"},
      {"role": "assistant", "reasoning_content": "Call the tool.", "content": "",
       "tool_calls": [{"id": "a", "type": "function", "function": {
           "name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2],
                                                "note": "multi\nline \"quoted\""}}}]},
      {"role": "tool", "tool_call_id": "a", "content": "☀️ 21°C"}], {"tools": [WEATHER_TOOL]}),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
     {"thinking": False}),
]
RENDERED = [render(messages, **options) for messages, options in CONVERSATIONS]


# ---------------------------------------------------------------------------------------------
# ByteTokenizer


def test_byte_tokenizer_layout():
    tok = ByteTokenizer()
    assert tok.vocab_size == len(tok) == 320
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.special_tokens[BOS] == 0 and tok.special_tokens[EOS] == 1
    assert tok.special_tokens["<pad>"] == 2
    ids = [tok.special_tokens[s] for s in SPECIAL_STRINGS]
    assert ids == list(range(3, 3 + len(SPECIAL_STRINGS))) and max(ids) < 32
    assert tok.encode("A") == [32 + 65] and tok.encode("\x00\xff") == [32, 32 + 0xC3, 32 + 0xBF]


def test_byte_tokenizer_every_special_string_is_one_id():
    tok = ByteTokenizer()
    for s, i in tok.special_tokens.items():
        if s != "<pad>":
            assert tok.encode(s) == [i], s
        assert tok.decode([i]) == s
    for s in CHAT_TOKENS:
        assert len(tok.encode(s)) == 1, s
    assert set(check_chat_tokens(tok)) == set(CHAT_TOKENS)


def test_byte_tokenizer_longest_match_and_pad_text():
    tok = ByteTokenizer()
    ids = tok.encode('<｜DSML｜invoke name="f">')
    assert ids[0] == tok.special_tokens[INVOKE_OPEN]
    assert tok.decode(ids[1:]) == ' name="f">'
    # an unknown DSML tag still gets the ｜DSML｜ id, between bytes
    assert tok.encode("<｜DSML｜x>") == [32 + ord("<"), tok.special_tokens[DSML],
                                        32 + ord("x"), 32 + ord(">")]
    assert tok.encode("<pad>") == [32 + b for b in b"<pad>"]


@pytest.mark.parametrize("text", RENDERED)
def test_byte_tokenizer_round_trips_rendered_conversations(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id  # a rendered prompt carries its own BOS
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode(text, add_bos=True) == [tok.bos_id] + ids
    # markers are single ids inside a conversation too
    assert ids.count(tok.special_tokens[ASSISTANT]) == text.count(ASSISTANT)


def test_byte_tokenizer_decode_is_forgiving_and_checked():
    tok = ByteTokenizer()
    cut = tok.encode("é")[:1]  # first byte of a two-byte character
    assert tok.decode(cut) == "\ufffd"
    assert tok.decode(tok.encode("a" + THINK_OPEN) + cut) == "a<think>\ufffd"
    assert tok.decode([30, 300]) == "\ufffd\ufffd"  # reserved ids
    with pytest.raises(ValueError):
        tok.decode([320])
    with pytest.raises(ValueError):
        tok.decode([-1])


# ---------------------------------------------------------------------------------------------
# A real `tokenizers` BPE file, trained here in memory


def train_bpe(path, special_tokens):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    sentences = ["The weather in Paris is sunny today.", "What is two plus two?",
                 "Call the tool with the city name.", "Bonjour, comment ça va ?"] * 4
    tok.train_from_iterator(sentences, trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
    # BOS and EOS first, so that they get ids 0 and 1 as in DeepSeek's tokenizer
    return train_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json",
                     CHAT_TOKENS + ("<｜▁pad▁｜>",))


def test_hf_tokenizer_chat_tokens_are_single_ids(bpe_path):
    tok = load_tokenizer(bpe_path)
    found = check_chat_tokens(tok)
    assert found[BOS] == tok.bos_id == 0 and found[EOS] == tok.eos_id == 1
    assert tok.pad_id == tok.special_tokens["<｜▁pad▁｜>"]
    for s in CHAT_TOKENS:
        assert tok.encode(s) == [tok.special_tokens[s]]
    assert load_tokenizer(bpe_path.parent).vocab_size == tok.vocab_size  # the folder works too


@pytest.mark.parametrize("text", RENDERED)
def test_hf_tokenizer_round_trips_rendered_conversations(bpe_path, text):
    tok = load_tokenizer(bpe_path)
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == text
    assert tok.encode(text, add_bos=True) == [tok.bos_id] + ids
    assert ids.count(tok.special_tokens[DSML]) == text.count(DSML)


def test_check_chat_tokens_names_split_tokens(tmp_path):
    tok = load_tokenizer(train_bpe(tmp_path / "tokenizer.json", [BOS, EOS]))
    with pytest.raises(ValueError, match="<｜User｜>"):
        check_chat_tokens(tok)
    assert check_chat_tokens(tok, [BOS, EOS]) == {BOS: 0, EOS: 1}


# ---------------------------------------------------------------------------------------------
# Every special token of the real format (as DeepSeek's encoder writes it) is covered

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "spec" / "chat-golden" / "vectors.json"


def format_tokens():
    """The special-token strings that appear in prompts of the chat format: every <｜...｜>
    marker in the golden prompts and in the task tokens, plus the thinking and DSML tokens."""
    texts = [c["expected"] for c in json.loads(GOLDEN.read_text())] if GOLDEN.exists() else []
    texts += [encode_messages([{"role": "user", "content": "q", "task": t}]) for t in TASKS]
    # one conversation that uses every marker, so the set is complete without the golden vectors
    tool = {"type": "function", "function": {"name": "f", "description": "d",
                                             "parameters": {"type": "object", "properties": {}}}}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    texts.append(encode_messages([
        {"role": "system", "content": "s", "tools": [tool]}, {"role": "user", "content": "u"},
        {"role": "assistant", "reasoning_content": "r", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "t", "tool_call_id": "c1"},
        {"role": "assistant", "reasoning_content": "r2", "content": "a"}, {"role": "latest_reminder", "content": "m"},
        {"role": "user", "content": "u2"}]))
    found = set()
    for text in texts:
        found.update(re.findall(r"<｜[^｜<>]+｜>", text))
        found.update(s for s in (THINK_OPEN, THINK_CLOSE, DSML) if s in text)
    return found


def test_chat_tokens_cover_every_special_token_of_the_format():
    tokens = format_tokens()
    assert len(tokens) >= 8 + len(TASK_TOKENS)  # BOS EOS User Assistant reminder think x2 DSML
    assert tokens <= set(CHAT_TOKENS), tokens - set(CHAT_TOKENS)
    tok = ByteTokenizer()
    ids = check_chat_tokens(tok)
    assert set(ids) == set(CHAT_TOKENS) and len(set(ids.values())) == len(CHAT_TOKENS)


@pytest.mark.skipif(not GOLDEN.exists(), reason="golden vectors not present")
def test_byte_tokenizer_round_trips_golden_prompts():
    tok = ByteTokenizer()
    for case in json.loads(GOLDEN.read_text()):
        text = case["expected"]
        ids = tok.encode(text)
        assert tok.decode(ids) == text, case["name"]
        for s in CHAT_TOKENS:
            if s != DSML:  # the DSML token is also inside the longer DSML tag ids
                assert ids.count(tok.special_tokens[s]) == text.count(s), (case["name"], s)
