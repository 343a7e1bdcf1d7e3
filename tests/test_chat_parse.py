"""parse reads back what encode_messages renders; what it does with misspelt DSML."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from v4lab.chat import (ASSISTANT, BOS, DSML, EOS, THINK_CLOSE, THINK_OPEN, USER, DSMLParseError,
                        encode_messages, parse)

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("search", "get_weather", "now", "日本語")]


def last_turn(assistant: dict, thinking_mode="thinking") -> str:
    """The text of ``assistant`` as encode_messages renders it, as the last turn of a chat."""
    prompt = encode_messages([{"role": "system", "content": "S", "tools": TOOLS},
                              {"role": "user", "content": "Q"}, assistant],
                             thinking_mode=thinking_mode)
    marker = ASSISTANT + (THINK_OPEN if thinking_mode == "thinking" else THINK_CLOSE)
    head, sep, text = prompt.rpartition(marker)
    assert sep and head.startswith(BOS)
    return text


def call(name, arguments, as_string):
    return {"type": "function", "id": f"id_{name}", "function": {
        "name": name, "arguments": json.dumps(arguments) if as_string else arguments}}


TURNS = {
    "parallel calls": [call("get_weather", {"city": "Paris", "days": 3}, True),
                       call("get_weather", {"city": "Oslo", "days": 1}, False)],
    "typed and nested": [call("search", {"n": -7, "x": 2.5e-8, "ok": True, "none": None,
                                         "deep": {"a": [[], {}, [None, False, {"b": "c"}]]},
                                         "number_text": "42", "json_text": '{"a": 1}'}, True)],
    "non-ASCII": [call("日本語", {"城市": "北京 😀", "emoji": ["✨", "ü"], "nl": "\nline\n"}, False)],
    "zero arguments": [call("now", {}, True), call("now", {}, False)],
    "spaces and brackets": [call("search", {"q": "  a < b > c & d  ", "empty": ""}, True)],
}


@pytest.mark.parametrize("content", ["", "Let me look these up.", "multi\n\nline"])
@pytest.mark.parametrize("case", sorted(TURNS))
def test_round_trip_of_encoded_turns(case, content):
    calls = TURNS[case]
    turn = {"role": "assistant", "reasoning_content": "Think.", "content": content,
            "tool_calls": calls}
    expected = [{"name": c["function"]["name"],
                 "arguments": json.loads(c["function"]["arguments"])
                 if isinstance(c["function"]["arguments"], str) else c["function"]["arguments"]}
                for c in calls]
    for mode, reasoning in (("thinking", "Think."), ("chat", "")):
        parsed = parse(last_turn(turn, mode))
        assert (parsed.reasoning, parsed.content, parsed.repairs) == (reasoning, content, [])
        # compare as JSON text so that True != 1 and key order counts
        assert json.dumps(parsed.tool_calls) == json.dumps(expected)
    # the parsed turn, appended as a message, renders to the same text again
    assert last_turn(parse(last_turn(turn)).as_message()) == last_turn(turn)


SAFE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(
    lambda s: not any(t in s for t in (BOS, EOS, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE, DSML)))
NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"<>\n'),
                min_size=1, max_size=8)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60)
    | st.floats(allow_nan=False, allow_infinity=False) | SAFE,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SAFE, inner, max_size=3),
    max_leaves=8)
CALLS = st.lists(st.tuples(NAMES, st.dictionaries(NAMES, JSON, max_size=4), st.booleans()),
                 max_size=3)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(reasoning=SAFE, content=SAFE, calls=CALLS)
def test_round_trip_fuzzed_turns(reasoning, content, calls):
    turn = {"role": "assistant", "reasoning_content": reasoning, "content": content,
            "tool_calls": [call(n, a, s) for n, a, s in calls]}
    parsed = parse(last_turn(turn))
    assert (parsed.reasoning, parsed.content) == (reasoning, content)
    assert json.dumps(parsed.tool_calls) == json.dumps(
        [{"name": n, "arguments": a} for n, a, _ in calls])


# ---------------------------------------------------------------------------------------------
# Misspellings real models emit: strict by default, lenient=True accepts and reports

INVOKE = ('<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="x" string="false">1'
          '</｜DSML｜parameter>\n</｜DSML｜invoke>')


def misspelt(name, sep="\n\n"):
    return f"r</think>c{sep}<｜DSML｜{name}>\n{INVOKE}\n</｜DSML｜{name}>" + EOS


@pytest.mark.parametrize("name", ["toolcalls", "function_calls", "tool_call", "Tool_Calls"])
def test_misspelt_block_name(name):
    text = misspelt(name)
    with pytest.raises(DSMLParseError, match=repr(name)) as info:
        parse(text)
    assert text[info.value.offset:].startswith(f"<｜DSML｜{name}>")
    parsed = parse(text, lenient=True)
    assert (parsed.reasoning, parsed.content) == ("r", "c")
    assert parsed.tool_calls == [{"name": "f", "arguments": {"x": 1}}]
    assert parsed.repairs == [f"block name {name!r} read as 'tool_calls'"]


def test_block_without_blank_line():
    text = misspelt("tool_calls", sep="")
    with pytest.raises(DSMLParseError, match="blank line"):
        parse(text)
    parsed = parse(text, lenient=True)
    assert parsed.content == "c" and parsed.tool_calls == [{"name": "f", "arguments": {"x": 1}}]
    assert parsed.repairs == ["no blank line before the tool_calls block"]
    assert parse(misspelt("tool_calls")).repairs == []


@pytest.mark.parametrize("text, match", [
    ("r</think>use ｜DSML｜ tokens" + EOS, "outside"),
    ("r</think>c\n\n</｜DSML｜tool_calls>" + EOS, "closing DSML tag"),
    ("r</think>c\n\n<｜DSML｜invoke name=\"f\">" + EOS, "'invoke'"),
    ("r\n\n<｜DSML｜tool_calls></think>c" + EOS, "inside the reasoning"),
    (misspelt("tool_calls").replace("invoke", "invok", 1), "expected"),
])
def test_dsml_is_never_returned_as_text(text, match):
    for lenient in (False, True):
        with pytest.raises(DSMLParseError, match=match) as info:
            parse(text, lenient=lenient)
        assert 0 <= info.value.offset < len(text)
