"""The V4 chat format (spec section 9): hand-written layouts, DSML round trips, parser fuzzing.

The golden vectors of DeepSeek's own encoder are checked in test_chat_golden.py."""
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from v4lab.chat import (ASSISTANT, BOS, DSML, EOS, INVOKE_CLOSE, INVOKE_OPEN, PARAMETER_CLOSE,
                        PARAMETER_OPEN, REASONING_EFFORT_MAX, THINK_CLOSE, THINK_OPEN,
                        TOOL_CALLS_CLOSE, TOOL_CALLS_OPEN, TOOL_CALLS_START, USER,
                        DSMLParseError, ParsedMessage, parse, render, render_assistant,
                        render_tools_section)

# ---------------------------------------------------------------------------------------------
# Golden layouts, written by hand from spec section 9.

B, E = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
U, A = "<｜User｜>", "<｜Assistant｜>"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                   "days": {"type": "integer"}}}}}
WEATHER_SCHEMA_LINE = ('{"name": "get_weather", "description": "Weather forecast for a city.", '
                       '"parameters": {"type": "object", "properties": {"city": {"type": '
                       '"string"}, "days": {"type": "integer"}}}}')

WEATHER_CALL_TURN = {
    "role": "assistant", "reasoning_content": "Need the forecast.", "content": "Checking.",
    "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}},
        {"id": "c2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'}},
    ]}
WEATHER_CALL_TEXT = (
    "Need the forecast.</think>Checking.\n\n"
    "<｜DSML｜tool_calls>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    '<｜DSML｜invoke name="get_weather">\n'
    '<｜DSML｜parameter name="city" string="true">Oslo</｜DSML｜parameter>\n'
    '<｜DSML｜parameter name="days" string="false">1</｜DSML｜parameter>\n'
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>" + E)

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "reasoning_content": "Add them.", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]


def test_token_strings_use_fullwidth_bar_and_lower_block():
    assert BOS == B and EOS == E and USER == U and ASSISTANT == A
    assert "\uff5c" in BOS and "\u2581" in BOS and DSML == "\uff5cDSML\uff5c"
    assert TOOL_CALLS_OPEN == "<｜DSML｜tool_calls>" and TOOL_CALLS_CLOSE == "</｜DSML｜tool_calls>"


def test_plain_chat_turn_thinking_and_chat_mode():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(messages) == B + "Be brief." + U + "Hi" + A + "<think>"
    assert render(messages, thinking=False) == B + "Be brief." + U + "Hi" + A + "</think>"
    assert render(messages[1:]) == B + U + "Hi" + A + "<think>"


def test_multi_turn_drops_earlier_reasoning():
    expected = (B + "Be brief." + U + "What is 2+2?" + A + "</think>4" + E
                + U + "And 3+3?" + A + "<think>")
    assert render(TWO_TURNS) == expected


def test_chat_mode_never_shows_reasoning():
    expected = (B + "Be brief." + U + "What is 2+2?" + A + "</think>4" + E
                + U + "And 3+3?" + A + "</think>")
    assert render(TWO_TURNS, thinking=False) == expected
    assert render(TWO_TURNS, tools=[WEATHER_TOOL], thinking=False).endswith(
        U + "What is 2+2?" + A + "</think>4" + E + U + "And 3+3?" + A + "</think>")


def test_last_assistant_turn_after_last_user_keeps_reasoning():
    messages = TWO_TURNS + [{"role": "assistant", "reasoning": "Add again.", "content": "6"}]
    expected = (B + "Be brief." + U + "What is 2+2?" + A + "</think>4" + E
                + U + "And 3+3?" + A + "<think>Add again.</think>6" + E)
    assert render(messages) == expected  # a full transcript: no generation prompt


def test_tools_defined_keep_all_reasoning():
    expected = (B + "Be brief.\n\n" + render_tools_section([WEATHER_TOOL])
                + U + "What is 2+2?" + A + "<think>Add them.</think>4" + E
                + U + "And 3+3?" + A + "<think>")
    assert render(TWO_TURNS, tools=[WEATHER_TOOL]) == expected
    # tools defined on the system message instead of the argument: same prompt
    on_system = [dict(TWO_TURNS[0], tools=[WEATHER_TOOL])] + TWO_TURNS[1:]
    assert render(on_system) == expected


def test_tools_section_lists_one_schema_per_line_and_the_dsml_syntax():
    other = {"type": "function", "function": {"name": "now", "parameters": {}}}
    section = render_tools_section([WEATHER_TOOL, other])
    lines = section.split("\n")
    i = lines.index(WEATHER_SCHEMA_LINE)
    assert lines[i + 1] == '{"name": "now", "parameters": {}}'
    for tag in ("<｜DSML｜tool_calls>", '<｜DSML｜invoke name="', '<｜DSML｜parameter name="',
                'string="true"', 'string="false"', "</｜DSML｜parameter>", "</｜DSML｜invoke>",
                "</｜DSML｜tool_calls>"):
        assert tag in section
    assert section.endswith("tool calls.\n")
    # no system message: render adds an empty one, so a blank line precedes the section
    prompt = render([{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL])
    assert prompt == B + "\n\n" + render_tools_section([WEATHER_TOOL]) + U + "Hi" + A + "<think>"


def test_tool_call_turn_and_results_merged_in_call_order():
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        WEATHER_CALL_TURN,
        {"role": "tool", "tool_call_id": "c2", "content": "Oslo: snow"},  # out of order
        {"role": "tool", "tool_call_id": "c1", "content": "Paris: sun"},
    ]
    head = B + "\n\n" + render_tools_section([WEATHER_TOOL]) + U + "Weather in Paris and Oslo?"
    results = "<tool_result>Paris: sun</tool_result>\n\n<tool_result>Oslo: snow</tool_result>"
    assert render(messages, tools=[WEATHER_TOOL]) == (
        head + A + "<think>" + WEATHER_CALL_TEXT + U + results + A + "<think>")

    # a user message right after the results joins the same user turn
    with_user = messages + [{"role": "user", "content": "Which is warmer?"}]
    assert render(with_user, tools=[WEATHER_TOOL]) == (
        head + A + "<think>" + WEATHER_CALL_TEXT + U + results + "\n\nWhich is warmer?"
        + A + "<think>")


def test_tool_results_without_ids_keep_message_order():
    messages = [{"role": "user", "content": "Go"}, WEATHER_CALL_TURN,
                {"role": "tool", "content": "first"}, {"role": "tool", "content": {"t": 2}}]
    assert render(messages).endswith(
        E + U + '<tool_result>first</tool_result>\n\n<tool_result>{"t": 2}</tool_result>'
        + A + "<think>")


def test_reasoning_effort():
    messages = [{"role": "user", "content": "Hi"}]
    assert REASONING_EFFORT_MAX.startswith(
        "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n")
    assert render(messages, reasoning_effort="max") == (
        B + REASONING_EFFORT_MAX + "\n\n" + U + "Hi" + A + "<think>")
    assert render(messages, reasoning_effort="high") == render(messages)
    assert render(messages, reasoning_effort=None) == render(messages)
    assert render(messages, thinking=False, reasoning_effort="max") == B + U + "Hi" + A + "</think>"
    with pytest.raises(ValueError):
        render(messages, reasoning_effort="extreme")


def test_render_assistant_golden_and_parse():
    assert render_assistant(WEATHER_CALL_TURN) == WEATHER_CALL_TEXT
    assert render_assistant(WEATHER_CALL_TURN, thinking=False) == WEATHER_CALL_TEXT.split(
        "</think>", 1)[1]
    assert render_assistant({"role": "assistant", "content": "Hello"}) == "</think>Hello" + E

    parsed = parse(WEATHER_CALL_TEXT)
    assert isinstance(parsed, ParsedMessage)
    reasoning, content, calls = parsed
    assert reasoning == "Need the forecast." and content == "Checking."
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}},
                     {"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}]
    # the parsed turn renders back to the same text, and a leading <think> is accepted
    assert render_assistant(parsed.as_message()) == WEATHER_CALL_TEXT
    assert parse("<think>" + WEATHER_CALL_TEXT) == parsed


def test_parse_plain_outputs():
    assert tuple(parse("Just an answer." + E)) == ("", "Just an answer.", [])
    assert tuple(parse("Hmm.</think>Answer")) == ("Hmm.", "Answer", [])  # EOS is optional
    assert tuple(parse("r</think>a" + E + "ignored")) == ("r", "a", [])
    assert tuple(parse("")) == ("", "", [])


def test_render_rejects_bad_input():
    with pytest.raises(ValueError):
        render([{"role": "robot", "content": "beep"}])
    bad_name = {"role": "assistant", "tool_calls": [{"function": {"name": 'a"b', "arguments": {}}}]}
    with pytest.raises(ValueError):
        render_assistant(bad_name)
    bad_args = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}
    with pytest.raises(ValueError):
        render_assistant(bad_args)
    nan = {"role": "assistant", "tool_calls": [{"function": {"name": "f",
                                                              "arguments": {"x": float("nan")}}}]}
    with pytest.raises(ValueError):
        render_assistant(nan)


# ---------------------------------------------------------------------------------------------
# Round trip: parse(render_assistant(m)) gives back m, over a seeded generator of turns.

PIECES = list("abcxyz 019\n\t\"'{}[]:,<>/\\=_-") + [
    "é", "ß", "中文", "😀", "｜", "▁", "\u2028", "\r\n", "\n\n", "null", "true", "3.5",
    '{"a": 1}', "[1, 2]", '"quoted"', "</", "<think", "DSML", "<tool_result>", "  "]
# A turn cannot contain these as text: in the model's output they are tokens with a meaning.
RESERVED = (B, E, U, A, THINK_OPEN, THINK_CLOSE, DSML)


def random_text(rng, max_pieces=10):
    while True:
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, max_pieces)))
        if not any(r in text for r in RESERVED):
            return text


def random_json(rng, depth=0):
    kind = rng.randrange(8 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -7, 42, 2**53 + 1, -(10**30)])
    if kind == 3:
        return rng.choice([0.5, -1e-7, 3.141592653589793, 1e300, rng.uniform(-1e6, 1e6)])
    if kind in (4, 5):
        return random_text(rng)
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_text(rng, 3): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


PARAMETER_NAMES = ["city", "q", "n", "x-y", "日本", "a b", "path/to", "{json}", "'"]


def random_turn(rng):
    calls = []
    for k in range(rng.choice([0, 0, 1, 2, 3])):
        arguments = {}
        for name in rng.sample(PARAMETER_NAMES, rng.randint(0, 4)):
            arguments[name] = random_json(rng)
        call = {"name": rng.choice(["search", "run_python", "get_weather", "日本語"]),
                "arguments": arguments}
        if rng.random() < 0.5:  # OpenAI form, arguments maybe as a JSON string
            args = json.dumps(arguments) if rng.random() < 0.5 else arguments
            call = {"id": f"call_{k}", "type": "function",
                    "function": {"name": call["name"], "arguments": args}}
        calls.append(call)
    turn = {"role": "assistant", "reasoning_content": random_text(rng, 20),
            "content": random_text(rng, 20)}
    if calls:
        turn["tool_calls"] = calls
    return turn


def expected_calls(turn):
    out = []
    for call in turn.get("tool_calls", []):
        fn = call.get("function", call)
        args = fn["arguments"]
        out.append({"name": fn["name"],
                    "arguments": json.loads(args) if isinstance(args, str) else args})
    return out


def test_round_trip_seeded_turns():
    rng = random.Random(1234)
    n_calls = 0
    for case in range(400):
        turn = random_turn(rng)
        text = render_assistant(turn)
        parsed = parse(text)
        assert parsed.reasoning == turn["reasoning_content"], case
        assert parsed.content == turn["content"], case
        # compare as JSON text so that True != 1 and key order counts
        assert json.dumps(parsed.tool_calls) == json.dumps(expected_calls(turn)), case
        n_calls += len(parsed.tool_calls)
    assert n_calls > 200  # the generator does exercise tool calls


def test_round_trip_edge_values():
    arguments = {"empty": "", "looks_like_json": '{"a": [1, 2]}', "number_text": "42",
                 "multi": "line one\n\nline two\n", "spaces": "  padded  ", "nested": {
                     "list": [[], {}, [None, False, 0]], "unicode": "ü😀"},
                 "empty_list": [], "empty_object": {}, "zero": 0, "false": False, "null": None}
    turn = {"role": "assistant", "reasoning_content": "", "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": arguments}},
                           {"function": {"name": "g", "arguments": {}}}]}
    reasoning, content, calls = parse(render_assistant(turn))
    assert (reasoning, content) == ("", "")
    assert json.dumps(calls) == json.dumps([{"name": "f", "arguments": arguments},
                                            {"name": "g", "arguments": {}}])


# ---------------------------------------------------------------------------------------------
# Strict DSML parsing: every malformed block raises DSMLParseError, with offset and tag.

PARAM_CITY = '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>'
PARAM_DAYS = '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>'


def block(*body, tail="</｜DSML｜tool_calls>"):
    return "r</think>c\n\n<｜DSML｜tool_calls>\n" + "\n".join(body) + "\n" + tail + E


def invoke(*params, name="f"):
    return f'<｜DSML｜invoke name="{name}">\n' + "\n".join(params) + "\n</｜DSML｜invoke>"


MALFORMED = {
    "unclosed parameter": block(invoke(PARAM_CITY.replace(PARAMETER_CLOSE, ""))),
    "unclosed invoke": block(invoke(PARAM_CITY).replace(INVOKE_CLOSE, "")),
    "unclosed block": block(invoke(PARAM_CITY), tail=""),
    "open tag without >": "c\n\n<｜DSML｜tool_callsX\n" + invoke(PARAM_CITY) + TOOL_CALLS_CLOSE,
    "attribute misspelt": block(invoke(PARAM_CITY).replace("invoke name=", "invoke nam=")),
    "attribute unquoted": block('<｜DSML｜invoke name=f>\n' + PARAM_CITY + "\n</｜DSML｜invoke>"),
    "attribute unterminated": block('<｜DSML｜invoke name="f'),
    "empty name": block(invoke(PARAM_CITY, name="")),
    "extra attribute": block(invoke(PARAM_CITY.replace('string="true"',
                                                       'string="true" kind="x"'))),
    "unknown string= value": block(invoke(PARAM_CITY.replace('"true"', '"yes"'))),
    "invalid JSON": block(invoke(PARAM_DAYS.replace(">3<", ">{days: 3}<"))),
    "NaN is not JSON": block(invoke(PARAM_DAYS.replace(">3<", ">NaN<"))),
    "empty JSON": block(invoke(PARAM_DAYS.replace(">3<", "><"))),
    "very deep JSON": block(invoke(PARAM_DAYS.replace(">3<", ">" + "[" * 100000 + "<"))),
    "duplicate parameter": block(invoke(PARAM_CITY, PARAM_CITY)),
    "text between tags": block(invoke(PARAM_CITY, "oops", PARAM_DAYS)),
    "text inside block": block("hello", invoke(PARAM_CITY)),
    "trailing garbage": block(invoke(PARAM_CITY), tail="</｜DSML｜tool_calls>\njunk"),
    "empty block": block(),
    "stray closing tag": block(invoke(PARAM_CITY), INVOKE_CLOSE),
    "nested block": block(TOOL_CALLS_OPEN, invoke(PARAM_CITY)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dsml_raises(case):
    text = MALFORMED[case]
    with pytest.raises(DSMLParseError) as info:
        parse(text)
    error = info.value
    assert isinstance(error, ValueError)
    assert 0 <= error.offset <= len(text) and DSML in error.tag
    assert f"offset {error.offset}" in str(error)


def test_valid_block_variants_parse():
    # whitespace between tags is free; an invoke may have no parameters
    text = ("\n\n<｜DSML｜tool_calls>" + invoke(name="now").replace("\n", "")
            + "  \n\t" + invoke(PARAM_CITY, PARAM_DAYS) + "\n</｜DSML｜tool_calls>\n")
    assert parse(text).tool_calls == [{"name": "now", "arguments": {}},
                                      {"name": "f", "arguments": {"city": "Paris", "days": 3}}]


def test_error_points_at_the_problem():
    text = block(invoke(PARAM_CITY.replace('"true"', '"yes"')))
    with pytest.raises(DSMLParseError) as info:
        parse(text)
    assert text[info.value.offset:].startswith('yes">')
    assert info.value.tag == PARAMETER_OPEN


SAMPLES = [WEATHER_CALL_TEXT] + [render_assistant(random_turn(random.Random(seed)))
                                 for seed in range(40)]
SAMPLES = [s for s in SAMPLES if TOOL_CALLS_START in s][:8]


@pytest.mark.parametrize("text", SAMPLES[:4])
def test_truncation_at_every_position(text):
    """Cut before the DSML token: plain content. Cut once the DSML token is there, inside the
    block or inside the EOS after it (trailing garbage): error. Cut right after the block or
    at the end: all calls."""
    full = parse(text)
    start = text.index(TOOL_CALLS_START)
    closed = text.index(TOOL_CALLS_CLOSE) + len(TOOL_CALLS_CLOSE)
    assert text[closed:] == E
    for k in range(len(text) + 1):
        cut = text[:k]
        if start + len("\n\n<" + DSML) <= k < len(text) and k != closed:
            with pytest.raises(DSMLParseError):
                parse(cut)
            continue
        try:
            parsed = parse(cut)
        except DSMLParseError as e:  # a cut inside the reasoning or content cannot fail
            raise AssertionError(f"cut at {k} raised {e}")
        if k >= closed:
            assert parsed == full
        else:
            assert parsed.tool_calls == []


FRAGMENTS = [TOOL_CALLS_OPEN, TOOL_CALLS_CLOSE, INVOKE_OPEN, INVOKE_CLOSE, PARAMETER_OPEN,
             PARAMETER_CLOSE, DSML, ' name="', '" string="', 'true">', 'false">', '">', '"',
             ">", "<", "\n\n", "{", "}", "[", "]", '"x', "NaN", "1e999", "-", E, THINK_CLOSE,
             "\\", "\ud800", " ", "\n", TOOL_CALLS_START]

MUTATION = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 4000), st.characters()),
    st.tuples(st.just("delete"), st.integers(0, 4000), st.integers(1, 40)),
    st.tuples(st.just("insert"), st.integers(0, 4000), st.sampled_from(FRAGMENTS)),
)


def mutate(text, mutations):
    for kind, where, what in mutations:
        pos = where % (len(text) + 1)
        if kind == "replace":
            text = text[:pos] + what + text[pos + 1:]
        elif kind == "delete":
            text = text[:pos] + text[pos + what:]
        else:
            text = text[:pos] + what + text[pos:]
    return text


def parses_or_raises_dsml_error(text):
    try:
        result = parse(text)
    except DSMLParseError:
        return
    assert isinstance(result.reasoning, str) and isinstance(result.content, str)
    for call in result.tool_calls:
        assert isinstance(call["name"], str) and isinstance(call["arguments"], dict)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(text=st.sampled_from(SAMPLES), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_corrupted_blocks(text, mutations):
    parses_or_raises_dsml_error(mutate(text, mutations))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(body=st.lists(st.sampled_from(FRAGMENTS + ["a", "3", "f"]), max_size=30))
def test_fuzz_fragment_soup(body):
    parses_or_raises_dsml_error("r</think>c" + TOOL_CALLS_START + "".join(body))


def test_chat_reexports_its_token_strings_and_the_dsml_code():
    # `from v4lab.chat import X` gives the object defined in chat_tokens / dsml, not a copy
    from v4lab import chat, chat_tokens, dsml

    for name in chat_tokens.__all__:
        assert getattr(chat, name) is getattr(chat_tokens, name), name
    for name in ("parse", "render_tool_calls", "DSMLParseError", "ParsedMessage"):
        assert getattr(chat, name) is getattr(dsml, name), name
    for name in chat.__all__:
        assert hasattr(chat, name), name
