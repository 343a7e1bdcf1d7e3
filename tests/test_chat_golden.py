"""encode_messages against DeepSeek's own V4 encoder: the golden vectors, then the rules they
follow written out by hand on other conversations (roles, options, edge cases)."""
import json
from pathlib import Path

import pytest

from v4lab.chat import (ASSISTANT, BOS, EOS, LATEST_REMINDER, REASONING_EFFORT_BEYOND_MAX,
                        REASONING_EFFORT_MAX, THINK_CLOSE, THINK_OPEN, USER, encode_messages,
                        render, render_tools_section)

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "spec" / "chat-golden" / "vectors.json"
VECTORS = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else []
needs_golden = pytest.mark.skipif(not VECTORS, reason=f"{GOLDEN} not present")

B, E, U, A, T, C = BOS, EOS, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE


@needs_golden
def test_golden_file_covers_both_generations():
    assert len(VECTORS) >= 39
    assert {c["generation"] for c in VECTORS} == {"v4", "v4-0731"}


@needs_golden
@pytest.mark.parametrize("case", VECTORS, ids=[f"{c['name']}-{c['generation']}" for c in VECTORS])
def test_golden_vector(case):
    kwargs = dict(thinking_mode=case["thinking_mode"], reasoning_effort=case["reasoning_effort"],
                  generation=case["generation"])
    if case.get("error"):  # DeepSeek's encoder raises on this conversation: so do we
        with pytest.raises(ValueError):
            encode_messages(case["messages"], **kwargs)
    else:
        assert encode_messages(case["messages"], **kwargs) == case["expected"]


# ---------------------------------------------------------------------------------------------
# The rules, on conversations the golden file does not hold

TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look a word up.",
                                         "parameters": {"type": "object", "properties": {
                                             "word": {"type": "string"}}}}}
CALL = {"id": "k", "type": "function", "function": {"name": "lookup",
                                                    "arguments": '{"word": "kiwi"}'}}
BLOCK = ("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"lookup\">\n"
         '<｜DSML｜parameter name="word" string="true">kiwi</｜DSML｜parameter>\n'
         "</｜DSML｜invoke>\n</｜DSML｜tool_calls>")
CALLING = [{"role": "user", "content": "Define kiwi."},
           {"role": "assistant", "reasoning_content": "Look it up.", "content": "",
            "tool_calls": [CALL]},
           {"role": "tool", "tool_call_id": "k", "content": "a fruit"}]


def test_tools_called_without_definitions_drop_the_calling_reasoning():
    # the tool results are the last user turn: the turn before them is history
    assert encode_messages(CALLING) == (
        B + U + "Define kiwi." + A + C + BLOCK + E
        + U + "<tool_result>a fruit</tool_result>" + A + T)
    # defined tools keep it
    with_tools = [{"role": "system", "content": "S", "tools": [TOOL]}] + CALLING
    assert encode_messages(with_tools) == (
        B + "S\n\n" + render_tools_section([TOOL]) + U + "Define kiwi." + A + T + "Look it up."
        + C + BLOCK + E + U + "<tool_result>a fruit</tool_result>" + A + T)
    # so does drop_thinking=False, and chat mode shows no reasoning at all
    assert "Look it up." in encode_messages(CALLING, drop_thinking=False)
    assert encode_messages(CALLING, thinking_mode="chat") == (
        B + U + "Define kiwi." + A + C + BLOCK + E
        + U + "<tool_result>a fruit</tool_result>" + A + C)


def test_developer_turns_before_the_last_user_are_dropped_with_the_reasoning():
    messages = [{"role": "system", "content": "S"}, {"role": "developer", "content": "Dev."},
                {"role": "assistant", "reasoning_content": "r", "content": "a"},
                {"role": "user", "content": "Q"}]
    # (the assistant marker went with the developer turn that wrote it)
    assert encode_messages(messages) == B + "S" + "a" + E + U + "Q" + A + T
    # chat mode drops nothing: the developer turn is a user turn with its assistant marker
    assert encode_messages(messages, thinking_mode="chat") == (
        B + "S" + U + "Dev." + A + C + "a" + E + U + "Q" + A + C)
    # the last developer turn is the current user turn
    assert encode_messages(messages[:2]) == B + "S" + U + "Dev." + A + T


def test_developer_message_carries_tools_and_response_format():
    fmt = {"type": "json_object"}
    out = encode_messages([{"role": "developer", "content": "Do it.", "tools": [TOOL],
                            "response_format": fmt}])
    assert out == (B + U + "Do it.\n\n" + render_tools_section([TOOL])
                   + "\n\n## Response Format:\n\nYou MUST strictly adhere to the following "
                     'schema to reply:\n{"type": "json_object"}' + A + T)


def test_consecutive_user_messages_and_results_form_one_turn():
    out = encode_messages([{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                           {"role": "tool", "content": "r"}, {"role": "user", "content": ""}])
    assert out == B + U + "one\n\ntwo\n\n<tool_result>r</tool_result>\n\n" + A + T


def test_non_string_tool_results():
    out = encode_messages(CALLING[:2] + [{"role": "tool", "content": [
        {"type": "text", "text": "part 1"}, {"type": "image_url"}, {"type": "text", "text": "2"}]},
        {"role": "tool", "content": 7}, {"role": "tool", "content": True}])
    assert out.endswith(U + "<tool_result>part 1\n\n[Unsupported image_url]\n\n2</tool_result>"
                        "\n\n<tool_result>7</tool_result>\n\n<tool_result>True</tool_result>"
                        + A + T)


def test_wo_eos_and_trailing_turns():
    messages = [{"role": "user", "content": "Q"},
                {"role": "assistant", "reasoning_content": "r", "content": "partial",
                 "wo_eos": True}]
    assert encode_messages(messages) == B + U + "Q" + A + T + "r" + C + "partial"
    reminder = [{"role": "user", "content": "Q"}, {"role": "latest_reminder", "content": "R"}]
    assert encode_messages(reminder) == B + U + "Q" + A + T + LATEST_REMINDER + "R"


def test_task_tokens():
    q = [{"role": "user", "content": "Q", "task": "action"}]
    assert encode_messages(q) == B + U + "Q" + A + T + "<｜action｜>"
    assert encode_messages(q, thinking_mode="chat") == B + U + "Q" + A + C + "<｜action｜>"
    # the answer to a task turn has no thinking part; a task turn followed by a user turn
    # writes no token, and the user turn after it stays a turn of its own
    answered = [{"role": "user", "content": "Q", "task": "title"},
                {"role": "assistant", "reasoning_content": "r", "content": "Title"}]
    assert encode_messages(answered) == B + U + "Q<｜title｜>Title" + E
    then_user = [{"role": "user", "content": "Q", "task": "domain"},
                 {"role": "user", "content": "Q2"}]
    assert encode_messages(then_user) == B + U + "Q" + U + "Q2" + A + T


def test_zero_argument_calls_and_dict_arguments():
    def turn(arguments):
        return [{"role": "user", "content": "Q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "now", "arguments": arguments}}]}]
    zero = encode_messages(turn("{}"))
    assert zero.endswith(C + '\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="now">\n\n'
                         "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + E)
    assert encode_messages(turn({})) == zero
    typed = {"n": 3, "x": 0.5, "ok": False, "none": None, "list": [1, "é"], "obj": {"a": {}}}
    assert encode_messages(turn(typed)) == encode_messages(turn(json.dumps(typed)))
    assert ('<｜DSML｜parameter name="list" string="false">[1, "é"]</｜DSML｜parameter>'
            in encode_messages(turn(typed)))


def test_arguments_that_are_not_json():
    turn = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "run", "arguments": "ls -l"}}]}]
    # the V4 encoder writes them as one raw string parameter; the 0731 encoder raises
    assert encode_messages(turn).endswith(
        '<｜DSML｜invoke name="run">\n<｜DSML｜parameter name="arguments" string="true">ls -l'
        "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + E)
    with pytest.raises(ValueError, match="not valid JSON"):
        encode_messages(turn, generation="v4-0731")


def test_reasoning_effort_tiers():
    m = [{"role": "user", "content": "Q"}]
    plain = B + U + "Q" + A + T
    for effort in (None, "low"):
        assert encode_messages(m, reasoning_effort=effort, generation="v4-0731") == plain
    assert encode_messages(m, reasoning_effort="high", generation="v4-0731") == (
        B + REASONING_EFFORT_MAX + "\n\n" + U + "Q" + A + T)
    assert encode_messages(m, reasoning_effort="max", generation="v4-0731") == (
        B + REASONING_EFFORT_BEYOND_MAX + "\n\n" + U + "Q" + A + T)
    assert encode_messages(m, reasoning_effort="high") == plain  # v4: "high" is the default
    assert encode_messages(m, reasoning_effort="max") == (
        B + REASONING_EFFORT_MAX + "\n\n" + U + "Q" + A + T)
    for generation in ("v4", "v4-0731"):
        assert encode_messages(m, "chat", "max", generation) == B + U + "Q" + A + C


def test_context_is_not_rendered_but_shapes_the_prompt():
    tools = [{"role": "system", "content": "S", "tools": [TOOL]}]
    context = tools + CALLING[:2]
    two = {"id": "k2", "type": "function", "function": {"name": "lookup",
                                                        "arguments": '{"word": "fig"}'}}
    context[-1] = dict(context[-1], tool_calls=[CALL, two])
    results = [{"role": "tool", "tool_call_id": "k2", "content": "fig!"},
               {"role": "tool", "tool_call_id": "k", "content": "kiwi!"}]
    # the calls are in the context: results still sort into call order, and no BOS
    assert encode_messages(results, context=context) == (
        U + "<tool_result>kiwi!</tool_result>\n\n<tool_result>fig!</tool_result>" + A + T)
    full = encode_messages(context + results)
    assert full.endswith(encode_messages(results, context=context))
    assert not encode_messages(results, context=context, add_default_bos_token=True).startswith(B)
    no_bos = encode_messages(CALLING, add_default_bos_token=False)
    assert no_bos == encode_messages(CALLING)[len(B):]


def test_render_is_encode_messages_with_conveniences():
    messages = [{"role": "user", "content": "Define kiwi."},
                {"role": "assistant", "reasoning": "Look it up.",
                 "tool_calls": [{"name": "lookup", "arguments": {"word": "kiwi"}}]},
                {"role": "tool", "content": {"def": "a fruit"}}]
    expected = encode_messages(
        [{"role": "system", "content": "", "tools": [TOOL]},
         {"role": "user", "content": "Define kiwi."},
         {"role": "assistant", "reasoning_content": "Look it up.", "tool_calls": [CALL]},
         {"role": "tool", "content": '{"def": "a fruit"}'}])
    assert render(messages, tools=[TOOL["function"]]) == expected
    assert render(messages, tools=[TOOL], thinking=False) == encode_messages(
        [{"role": "system", "content": "", "tools": [TOOL]}] + [
            dict(m) for m in json.loads(json.dumps(
                [{"role": "user", "content": "Define kiwi."},
                 {"role": "assistant", "tool_calls": [CALL]},
                 {"role": "tool", "content": '{"def": "a fruit"}'}]))], thinking_mode="chat")


@pytest.mark.parametrize("kwargs, names", [
    ({"messages": [{"role": "robot", "content": "beep"}]}, "robot"),
    ({"messages": [{"content": "no role"}]}, "None"),
    ({"thinking_mode": "deep"}, "deep"),
    ({"generation": "v5"}, "v5"),
    ({"reasoning_effort": "low"}, "low"),       # v4 has no "low" tier
    ({"reasoning_effort": "medium", "generation": "v4-0731"}, "medium"),
    ({"messages": [{"role": "user", "content": "Q", "task": "summarize"}]}, "summarize"),
    ({"messages": [{"role": "assistant", "reasoning": "r", "content": "a"}]}, "reasoning_content"),
    ({"messages": [{"role": "user", "content": "Q", "tools": [TOOL]}]}, "tools"),
    ({"messages": [{"role": "developer", "content": ""}]}, "developer"),
    ({"messages": [{"role": "user", "content": None}]}, "NoneType"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "Q"}]}]}, "list"),
    ({"messages": [{"role": "system", "tools": [{"name": "bare"}]}]}, "bare"),
    ({"messages": [{"role": "tool", "content": [{"type": "text", "text": None}]}]},
     "text of a tool-result part"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"name": "f", "arguments": {}}]}]},
     "function"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{oops"}}]}], "generation": "v4-0731"},
     "not valid JSON"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "[1]"}}]}]}, "JSON object"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": 'f"', "arguments": "{}"}}]}]}, "tool name"),
])
def test_unknown_roles_options_and_bad_messages_raise_naming_them(kwargs, names):
    kwargs = {"messages": [{"role": "user", "content": "Q"}], **kwargs}
    with pytest.raises(ValueError, match=names):
        encode_messages(**kwargs)
