"""The DeepSeek-V4 chat format (spec section 9): render prompts, parse what the model writes.

A prompt is one string; the pieces follow each other with no separator unless one is shown::

    <｜begin▁of▁sentence｜>                         BOS
    [REASONING_EFFORT_MAX "\\n\\n"]                 only reasoning_effort="max" in thinking mode
    system text ["\\n\\n" tools section]            tools section: DSML syntax + one schema a line
    <｜User｜>user text                             tool results are merged in here as
                                                  <tool_result>...</tool_result> blocks
    <｜Assistant｜><think>  |  <｜Assistant｜></think>
                                                  <think>: the reasoning of this turn is shown
                                                  </think>: chat mode, or reasoning dropped
    [reasoning</think>]content[DSML block]<｜end▁of▁sentence｜>
    ...
    <｜User｜>last user text<｜Assistant｜><think>   the generation prompt (</think> in chat mode)

An assistant turn that calls tools ends its content with a DSML block (``\\n\\n`` first)::

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="get_weather">
    <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
    <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>

``string="true"`` marks a raw string value, ``string="false"`` a JSON value.

Reasoning retention: in thinking mode the reasoning of assistant turns before the last user
message is dropped (they open with ``</think>``), unless tools are defined: then every turn keeps
its reasoning, so an agent sees its earlier thoughts across tool calls (interleaved thinking).

Public API: :func:`render` (a whole conversation), :func:`render_assistant` (one assistant turn
as the model emits it), :func:`render_tool_calls` (the DSML block), :func:`parse` (model output
back to reasoning, content and tool calls) and :class:`DSMLParseError`.

The token strings below are those of spec section 9, character for character.  The text of the
tools section is this project's own wording: DeepSeek's encoder words it differently, so a
prompt with tools is not byte-identical to what the released checkpoints saw in training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

# ----------------------------------------------------------------------------------------------
# Token strings of spec section 9. "｜" is U+FF5C (full-width bar), "▁" is U+2581.
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TASK_TOKENS = ("<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>",
               "<｜read_url｜>")

# DSML tags. Invoke and parameter openers carry attributes: `<｜DSML｜invoke name="...">`.
DSML = "｜DSML｜"
TOOL_CALLS_OPEN = f"<{DSML}tool_calls>"
TOOL_CALLS_CLOSE = f"</{DSML}tool_calls>"
INVOKE_OPEN = f"<{DSML}invoke"
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAMETER_OPEN = f"<{DSML}parameter"
PARAMETER_CLOSE = f"</{DSML}parameter>"
TOOL_CALLS_START = f"\n\n<{DSML}tool_calls"  # where content ends and the DSML block begins

TOOL_RESULT_OPEN = "<tool_result>"
TOOL_RESULT_CLOSE = "</tool_result>"

# The fixed paragraph that reasoning_effort="max" puts at the start of the prompt.
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate "
    "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption "
    "is left unchecked."
)
REASONING_EFFORTS = (None, "low", "medium", "high", "max")  # only "max" changes the prompt

TOOLS_SECTION = """## Tools

You can call the tools listed below. To call tools, end your answer with one block of this form:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="TOOL_NAME">
<｜DSML｜parameter name="TEXT_PARAMETER" string="true">raw text, as is</｜DSML｜parameter>
<｜DSML｜parameter name="OTHER_PARAMETER" string="false">JSON value</｜DSML｜parameter>
</｜DSML｜invoke>
</｜DSML｜tool_calls>

Write one invoke per call; several calls share one block. A string value is written as is with \
string="true". Numbers, booleans, null, arrays and objects are written as JSON with string="false".
In thinking mode, finish your reasoning with </think> before the answer and the tool calls.
Tool results come back in the next user turn as <tool_result> blocks, in the order of the calls.

### Available tools (one JSON schema per line)

{schemas}

Call only these tools, with the parameter names and types that their schemas give."""

# Characters that cannot appear in a tool or parameter name (they would break the tag syntax).
_FORBIDDEN_IN_NAMES = '"<>\n'


# ----------------------------------------------------------------------------------------------
# Rendering


def render(messages: Iterable[dict], tools: list[dict] | None = None, thinking: bool = True,
           reasoning_effort: str | None = None) -> str:
    """Render an OpenAI-style conversation as one V4 prompt string (layout in the module doc).

    ``messages``: dicts with ``role`` in system / user / assistant / tool.  Assistant messages
    may carry ``reasoning_content`` (or ``reasoning``), ``content`` and ``tool_calls``; tool
    messages carry ``content`` and optionally ``tool_call_id``.  ``tools``: OpenAI tool
    definitions; a system message may also define them under its own ``"tools"`` key.
    ``thinking``: thinking mode (``<think>`` after the last assistant marker) or chat mode
    (``</think>``, no reasoning shown anywhere).  ``reasoning_effort="max"`` in thinking mode
    puts :data:`REASONING_EFFORT_MAX` right after BOS; other efforts change nothing.

    When the last message is not an assistant turn, the prompt ends with the generation prompt
    ``<｜Assistant｜><think>`` (or ``</think>``); otherwise it ends with that turn's EOS.
    """
    messages = list(messages)
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, "
                         f"got {reasoning_effort!r}")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"message {i}: unknown role {m.get('role')!r}")

    all_tools = list(tools or []) + [t for m in messages for t in (m.get("tools") or [])]
    keep_all_reasoning = bool(all_tools)  # spec: with tools, nothing is dropped
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)

    parts = [BOS]
    if thinking and reasoning_effort == "max":
        parts.append(REASONING_EFFORT_MAX + "\n\n")

    # The leading system messages and the tools section form the header.
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        start += 1
    header = [_text(m.get("content")) for m in messages[:start]]
    if all_tools:
        header.append(render_tools_section(all_tools))
    parts.append("\n\n".join(h for h in header if h))

    i = start
    while i < len(messages):
        m = messages[i]
        if m["role"] == "system":  # a later system message is plain text at its place
            parts.append(_text(m.get("content")))
            i += 1
        elif m["role"] == "assistant":
            show = thinking and (keep_all_reasoning or i > last_user)
            parts.append(ASSISTANT + (THINK_OPEN if show else THINK_CLOSE))
            parts.append(render_assistant(m, thinking=show))
            i += 1
        else:  # a run of tool messages, then at most one user message: one user turn
            j = i
            while j < len(messages) and messages[j]["role"] == "tool":
                j += 1
            pieces = [TOOL_RESULT_OPEN + r + TOOL_RESULT_CLOSE
                      for r in _ordered_tool_results(messages, i, j)]
            if j < len(messages) and messages[j]["role"] == "user":
                pieces.append(_text(messages[j].get("content")))
                j += 1
            parts.append(USER + "\n\n".join(pieces))
            i = j

    if not messages or messages[-1]["role"] != "assistant":
        parts.append(ASSISTANT + (THINK_OPEN if thinking else THINK_CLOSE))
    return "".join(parts)


def render_assistant(message: dict, thinking: bool = True) -> str:
    """One assistant turn as the model emits it after ``<｜Assistant｜><think>``.

    ``reasoning</think>content[DSML block]<｜end▁of▁sentence｜>``; with ``thinking=False``
    (chat mode, or reasoning dropped from history) the reasoning and ``</think>`` are left out.
    ``parse(render_assistant(m))`` gives back the reasoning, content and tool calls of ``m``.
    """
    out = ""
    if thinking:
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        out += reasoning + THINK_CLOSE
    out += _text(message.get("content"))
    if message.get("tool_calls"):
        out += render_tool_calls(message["tool_calls"])
    return out + EOS


def render_tool_calls(tool_calls: list[dict]) -> str:
    """The DSML block for a list of tool calls, starting with its ``\\n\\n`` separator.

    Each call is OpenAI-style ``{"type": "function", "function": {"name", "arguments"}}`` or
    flat ``{"name", "arguments"}``; arguments are a dict or a JSON string of an object.
    String values get ``string="true"`` and are written raw; any other value gets
    ``string="false"`` and is written as JSON (``json.dumps(v, ensure_ascii=False)``).
    """
    lines = ["\n\n" + TOOL_CALLS_OPEN]
    for call in tool_calls:
        name, arguments = _normalize_call(call)
        lines.append(f'{INVOKE_OPEN} name="{name}">')
        for key, value in arguments.items():
            _check_name(key, "parameter name")
            if isinstance(value, str):
                flag, text = "true", value
            else:
                flag, text = "false", json.dumps(value, ensure_ascii=False, allow_nan=False)
            lines.append(f'{PARAMETER_OPEN} name="{key}" string="{flag}">{text}{PARAMETER_CLOSE}')
        lines.append(INVOKE_CLOSE)
    lines.append(TOOL_CALLS_CLOSE)
    return "\n".join(lines)


def render_tools_section(tools: list[dict]) -> str:
    """The tools section of the system prompt: DSML syntax, then one JSON schema per line.

    An OpenAI tool ``{"type": "function", "function": {...}}`` is listed by its ``function``
    object (name, description, parameters); any other dict is listed as it is.
    """
    schemas = [json.dumps(t.get("function", t), ensure_ascii=False) for t in tools]
    return TOOLS_SECTION.replace("{schemas}", "\n".join(schemas))


def _text(content: Any) -> str:
    """Message content as text: None is empty, strings stay, anything else must be a string."""
    if content is None:
        return ""
    if not isinstance(content, str):
        raise TypeError(f"message content must be a string, got {type(content).__name__}")
    return content


def _check_name(name: Any, what: str) -> None:
    """Raise ValueError unless ``name`` can stand between the quotes of a DSML attribute."""
    if not isinstance(name, str) or not name or any(c in name for c in _FORBIDDEN_IN_NAMES):
        raise ValueError(f"{what} must be a non-empty string without quotes, angle brackets "
                         f"or newlines, got {name!r}")


def _normalize_call(call: dict) -> tuple[str, dict]:
    """(name, arguments dict) of an OpenAI-style or flat tool call."""
    fn = call.get("function", call)
    name = fn.get("name")
    _check_name(name, "tool name")
    arguments = fn.get("arguments") or {}
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise ValueError(f"arguments of tool call {name!r} must be a JSON object, "
                         f"got {type(arguments).__name__}")
    return name, arguments


def _ordered_tool_results(messages: list[dict], i: int, j: int) -> list[str]:
    """Contents of the tool messages ``messages[i:j]`` in the order of the calls they answer.

    The calls are those of the nearest assistant message before ``i``.  Results are sorted by
    ``tool_call_id`` when every tool message has an id that one of those calls carries;
    otherwise they keep message order.
    """
    results = messages[i:j]
    call_ids: list = []
    for m in reversed(messages[:i]):
        if m["role"] == "assistant":
            call_ids = [c.get("id") for c in (m.get("tool_calls") or [])]
            break
    ids = [m.get("tool_call_id") for m in results]
    if all(x is not None and x in call_ids for x in ids):
        results = sorted(results, key=lambda m: call_ids.index(m["tool_call_id"]))
    return [_tool_result_text(m.get("content")) for m in results]


def _tool_result_text(content: Any) -> str:
    """A tool result as text: strings stay, None is empty, other values become JSON."""
    if content is None or isinstance(content, str):
        return content or ""
    return json.dumps(content, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# Parsing


class DSMLParseError(ValueError):
    """Malformed model output in a DSML tool-call block.

    ``offset`` is the character offset in the parsed text where the problem was found and
    ``tag`` the tag (or tag part) that was being read there.
    """

    def __init__(self, message: str, offset: int, tag: str):
        super().__init__(f"{message} at offset {offset}, in {tag!r}")
        self.offset = offset
        self.tag = tag


@dataclass
class ParsedMessage:
    """An assistant turn read back from model output.

    ``tool_calls`` is a list of ``{"name": str, "arguments": dict}``.  Unpacks as a 3-tuple:
    ``reasoning, content, tool_calls = parse(text)``.
    """

    reasoning: str
    content: str
    tool_calls: list[dict] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.reasoning, self.content, self.tool_calls))

    def as_message(self) -> dict:
        """The turn as an OpenAI-style assistant message, ready to append to a conversation."""
        message: dict = {"role": "assistant", "reasoning_content": self.reasoning,
                         "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {"type": "function",
                 "function": {"name": c["name"], "arguments": dict(c["arguments"])}}
                for c in self.tool_calls]
        return message


def parse(text: str) -> ParsedMessage:
    """Read one assistant turn: reasoning, content and tool calls.

    The reasoning is the text before the first ``</think>`` (empty when there is none; a
    leading ``<think>`` is skipped).  The content runs to the EOS or to
    ``\\n\\n<｜DSML｜tool_calls``; text after the first EOS is not part of the turn and is
    ignored.  A DSML block is parsed strictly: anything malformed raises
    :class:`DSMLParseError`, and only whitespace may stand between tags or after the block.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a string, got {type(text).__name__}")
    end = text.find(EOS)
    if end < 0:
        end = len(text)
    start = len(THINK_OPEN) if text.startswith(THINK_OPEN) else 0

    think_end = text.find(THINK_CLOSE, start, end)
    if think_end >= 0:
        reasoning, start = text[start:think_end], think_end + len(THINK_CLOSE)
    else:
        reasoning = ""

    block = text.find(TOOL_CALLS_START, start, end)
    if block < 0:
        return ParsedMessage(reasoning, text[start:end], [])
    calls = _DSMLReader(text, block + 2, end).read_block()  # + 2: skip the "\n\n"
    return ParsedMessage(reasoning, text[start:block], calls)


def _reject_constant(name: str):
    """json.loads hook: NaN and Infinity are Python extensions, not JSON."""
    raise ValueError(f"{name} is not valid JSON")


class _DSMLReader:
    """A cursor over ``text[pos:end]`` that reads one DSML block, tag by tag.

    Grammar (``ws`` = optional whitespace)::

        block     := TOOL_CALLS_OPEN (ws invoke)+ ws TOOL_CALLS_CLOSE ws <end>
        invoke    := INVOKE_OPEN ' name="' NAME '">' (ws parameter)* ws INVOKE_CLOSE
        parameter := PARAMETER_OPEN ' name="' NAME '" string="' (true|false) '">' VALUE
                     PARAMETER_CLOSE
    """

    def __init__(self, text: str, pos: int, end: int):
        self.text, self.pos, self.end = text, pos, end

    def error(self, message: str, tag: str, offset: int | None = None) -> DSMLParseError:
        """A DSMLParseError at ``offset`` (default: the cursor) that quotes the text found."""
        offset = self.pos if offset is None else offset
        found = self.text[offset:min(offset + 24, self.end)]
        found = f"found {found!r}" if found else "found the end of the turn"
        return DSMLParseError(f"{message} ({found})", offset, tag)

    def at(self, literal: str) -> bool:
        """Whether the text at the cursor starts with ``literal``."""
        return self.text.startswith(literal, self.pos, self.end)

    def expect(self, literal: str, tag: str) -> None:
        """Step over ``literal``, or raise if the text at the cursor is something else."""
        if not self.at(literal):
            raise self.error(f"expected {literal!r}", tag)
        self.pos += len(literal)

    def skip_whitespace(self) -> None:
        while self.pos < self.end and self.text[self.pos].isspace():
            self.pos += 1

    def read_name(self, tag: str) -> str:
        """An attribute value up to its closing quote; it may not be empty nor contain <, >
        or a newline."""
        close = self.text.find('"', self.pos, self.end)
        if close < 0:
            raise self.error("unterminated attribute value", tag)
        value = self.text[self.pos:close]
        if not value or any(c in value for c in _FORBIDDEN_IN_NAMES):
            raise self.error("bad attribute value", tag)
        self.pos = close
        return value

    def read_block(self) -> list[dict]:
        """The whole block: its calls, after checking nothing but whitespace follows it."""
        self.expect(TOOL_CALLS_OPEN, TOOL_CALLS_OPEN)
        calls = []
        while True:
            self.skip_whitespace()
            if self.at(INVOKE_OPEN):
                calls.append(self.read_invoke())
            elif self.at(TOOL_CALLS_CLOSE):
                if not calls:
                    raise self.error("tool_calls block without any invoke", TOOL_CALLS_OPEN)
                self.pos += len(TOOL_CALLS_CLOSE)
                break
            else:
                raise self.error(f"expected {INVOKE_OPEN!r} or {TOOL_CALLS_CLOSE!r}",
                                 TOOL_CALLS_OPEN)
        self.skip_whitespace()
        if self.pos != self.end:
            raise self.error("unexpected text after the tool_calls block", TOOL_CALLS_CLOSE)
        return calls

    def read_invoke(self) -> dict:
        """One invoke: ``{"name": ..., "arguments": {...}}``."""
        self.expect(INVOKE_OPEN + ' name="', INVOKE_OPEN)
        name = self.read_name(INVOKE_OPEN)
        self.expect('">', INVOKE_OPEN)
        arguments: dict = {}
        while True:
            self.skip_whitespace()
            if self.at(PARAMETER_OPEN):
                key_at = self.pos
                key, value = self.read_parameter()
                if key in arguments:
                    raise self.error(f"duplicate parameter {key!r} in invoke {name!r}",
                                     PARAMETER_OPEN, key_at)
                arguments[key] = value
            elif self.at(INVOKE_CLOSE):
                self.pos += len(INVOKE_CLOSE)
                return {"name": name, "arguments": arguments}
            else:
                raise self.error(f"expected {PARAMETER_OPEN!r} or {INVOKE_CLOSE!r}",
                                 INVOKE_OPEN)

    def read_parameter(self) -> tuple[str, Any]:
        """One parameter: (name, raw string or decoded JSON value)."""
        tag_at = self.pos
        self.expect(PARAMETER_OPEN + ' name="', PARAMETER_OPEN)
        key = self.read_name(PARAMETER_OPEN)
        self.expect('" string="', PARAMETER_OPEN)
        if self.at('true">'):
            is_string = True
        elif self.at('false">'):
            is_string = False
        else:
            raise self.error('string= must be "true" or "false"', PARAMETER_OPEN)
        self.pos += len('true">') if is_string else len('false">')

        close = self.text.find(PARAMETER_CLOSE, self.pos, self.end)
        if close < 0:
            raise self.error(f"parameter {key!r} is never closed with {PARAMETER_CLOSE!r}",
                             PARAMETER_OPEN, tag_at)
        raw, value_at = self.text[self.pos:close], self.pos
        self.pos = close + len(PARAMETER_CLOSE)
        if is_string:
            return key, raw
        try:
            return key, json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise self.error(f"invalid JSON for parameter {key!r} ({e})", PARAMETER_OPEN,
                             value_at) from None


__all__ = [
    "BOS", "EOS", "USER", "ASSISTANT", "LATEST_REMINDER", "THINK_OPEN", "THINK_CLOSE",
    "TASK_TOKENS", "DSML", "TOOL_CALLS_OPEN", "TOOL_CALLS_CLOSE", "INVOKE_OPEN", "INVOKE_CLOSE",
    "PARAMETER_OPEN", "PARAMETER_CLOSE", "TOOL_CALLS_START", "TOOL_RESULT_OPEN",
    "TOOL_RESULT_CLOSE", "REASONING_EFFORT_MAX", "TOOLS_SECTION", "DSMLParseError",
    "ParsedMessage", "render", "render_assistant", "render_tool_calls", "render_tools_section",
    "parse",
]
