"""DSML tool-call blocks of the V4 chat format: render them, and read an assistant turn back.

An assistant turn that calls tools ends its content with a DSML block (``\\n\\n`` first)::

    <｜DSML｜tool_calls>
    <｜DSML｜invoke name="get_weather">
    <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
    <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>

``string="true"`` marks a raw string value, ``string="false"`` a JSON value; a call without
arguments has an empty line between its invoke tags.

Writing: :func:`render_tool_calls` (the block of a list of calls), built on
:func:`tool_calls_block`, :func:`call_arguments` (a call checked and its arguments decoded) and
:func:`to_json` (JSON as DeepSeek's encoder writes it), which :mod:`v4lab.chat` uses as well.
Reading: :func:`parse` splits model output into reasoning, content and tool calls
(:class:`ParsedMessage`), raising :class:`DSMLParseError` with the offset of anything
malformed.  All of these are also importable from :mod:`v4lab.chat`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from .chat_tokens import (DSML, EOS, INVOKE_CLOSE, INVOKE_OPEN, PARAMETER_CLOSE, PARAMETER_OPEN,
                          THINK_CLOSE, THINK_OPEN, TOOL_CALLS_BLOCK, TOOL_CALLS_CLOSE,
                          TOOL_CALLS_OPEN)

# Characters that cannot appear in a tool or parameter name (they would break the tag syntax).
_FORBIDDEN_IN_NAMES = '"<>\n'


# ----------------------------------------------------------------------------------------------
# Writing a block


def to_json(value: Any, what: str, allow_nan: bool = False) -> str:
    """JSON as DeepSeek's encoder writes it (``ensure_ascii=False``); NaN and infinities raise
    unless ``allow_nan`` (schemas may hold them; an argument value could not be parsed back)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=allow_nan)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be written as JSON: {e}") from None


def _check_name(name: Any, what: str) -> None:
    """Raise ValueError unless ``name`` can stand between the quotes of a DSML attribute."""
    if not isinstance(name, str) or not name or any(c in name for c in _FORBIDDEN_IN_NAMES):
        raise ValueError(f"{what} must be a non-empty string without quotes, angle brackets "
                         f"or newlines, got {name!r}")


def call_arguments(call: Any, where: str = "tool call", raw: bool = False) -> tuple[str, dict]:
    """(name, arguments dict) of an OpenAI-style tool call, checked.

    ``raw``: a string that is not JSON becomes ``{"arguments": string}`` (what the original
    V4 encoder does) instead of raising (what the 0731 encoder does)."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise ValueError(f"{where}: a tool call must be "
                         f'{{"type": "function", "function": {{"name", "arguments"}}}}, '
                         f"got {call!r}")
    fn = call["function"]
    name = fn.get("name")
    _check_name(name, f"{where}: tool name")
    arguments = fn.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError as e:
            if raw:
                return name, {"arguments": arguments}
            raise ValueError(f"{where}: arguments of tool call {name!r} are not valid JSON "
                             f"({e})") from None
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}: arguments of tool call {name!r} must be a JSON object "
                         f"(a dict or its JSON string), got {type(arguments).__name__}")
    for key, value in arguments.items():
        _check_name(key, f"{where}: parameter name of {name!r}")
        if not isinstance(value, str):
            to_json(value, f"{where}: parameter {key!r} of {name!r}")
    return name, arguments


def as_openai_call(call: Any) -> Any:
    """A flat tool call ``{"name", "arguments"}`` as the OpenAI-style call DeepSeek's format
    reads; anything else (an OpenAI-style call, or a value the checks will reject) as it is."""
    if isinstance(call, dict) and "function" not in call and "name" in call:
        return {"type": "function",
                "function": {"name": call["name"], "arguments": call.get("arguments") or {}}}
    return call


def render_tool_calls(tool_calls: list[dict]) -> str:
    """The DSML block for a list of tool calls, starting with its ``\\n\\n`` separator.

    Each call is OpenAI-style ``{"type": "function", "function": {"name", "arguments"}}`` (or
    flat ``{"name", "arguments"}``); arguments are a dict or a JSON string of an object.
    String values get ``string="true"`` and are written raw; any other value gets
    ``string="false"`` and is written as JSON (``json.dumps(v, ensure_ascii=False)``).
    """
    return tool_calls_block([as_openai_call(c) for c in tool_calls], raw=False)


def tool_calls_block(tool_calls: list[dict], raw: bool) -> str:
    """The DSML block of OpenAI-style calls (``\\n\\n`` first), each checked by
    :func:`call_arguments` (``raw`` as there: the original V4 encoder's one ``arguments``
    string for arguments that are not JSON)."""
    invokes = []
    for call in tool_calls:
        name, arguments = call_arguments(call, raw=raw)
        params = []
        for key, v in arguments.items():
            flag, text = ("true", v) if isinstance(v, str) else ("false", to_json(v, key))
            params.append(f'{PARAMETER_OPEN} name="{key}" string="{flag}">{text}{PARAMETER_CLOSE}')
        invokes.append(f'{INVOKE_OPEN} name="{name}">\n' + "\n".join(params) + f"\n{INVOKE_CLOSE}")
    return f"\n\n{TOOL_CALLS_OPEN}\n" + "\n".join(invokes) + f"\n{TOOL_CALLS_CLOSE}"


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

    ``tool_calls`` is a list of ``{"name": str, "arguments": dict}``; ``repairs`` lists what
    ``parse(..., lenient=True)`` accepted that the format does not allow (empty otherwise).
    Unpacks as a 3-tuple: ``reasoning, content, tool_calls = parse(text)``.
    """

    reasoning: str
    content: str
    tool_calls: list[dict] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

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


# Block names that models write by mistake for "tool_calls", compared without "_" and case:
# V3.2's "function_calls", and "toolcalls" / "tool_call" / "function_call".
_MISSPELT_BLOCKS = {"toolcalls", "toolcall", "functioncalls", "functioncall", "toolscalls"}


def _block_key(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def parse(text: str, lenient: bool = False) -> ParsedMessage:
    """Read one assistant turn: reasoning, content and tool calls.

    The reasoning is the text before the first ``</think>`` (empty when there is none; a
    leading ``<think>`` is skipped).  The content runs to the EOS or to
    ``\\n\\n<｜DSML｜tool_calls``; text after the first EOS is not part of the turn and is
    ignored.  The DSML block is parsed strictly: anything malformed raises
    :class:`DSMLParseError` (with the offset), and only whitespace may stand between tags or
    after the block.  ``｜DSML｜`` is a special token that content and reasoning never hold, so
    any other DSML text raises as well.

    Misspellings real models emit: by default a block opened as ``<｜DSML｜toolcalls>``,
    ``<｜DSML｜function_calls>`` (V3.2's name) or the like raises a DSMLParseError naming the
    misspelling, and so does a block without the blank line before it.  With
    ``lenient=True`` both are accepted and each is reported in ``ParsedMessage.repairs``;
    the tags inside the block are strict either way.  Nothing is ever returned as content.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a string, got {type(text).__name__}")
    end = text.find(EOS)
    if end < 0:
        end = len(text)
    start = len(THINK_OPEN) if text.startswith(THINK_OPEN) else 0

    think_end = text.find(THINK_CLOSE, start, end)
    if think_end >= 0:
        reasoning, content_start = text[start:think_end], think_end + len(THINK_CLOSE)
        inside = text.find(DSML, start, think_end)
        if inside >= 0:
            raise DSMLParseError("DSML markup inside the reasoning (tool calls come after "
                                 f"{THINK_CLOSE})", inside, DSML)
    else:
        reasoning, content_start = "", start

    at = text.find(DSML, content_start, end)
    if at < 0:
        return ParsedMessage(reasoning, text[content_start:end], [])
    repairs: list[str] = []
    lt = at - 1
    if lt < content_start or text[lt] != "<":
        what = "a closing DSML tag" if text[lt:at] == "/" and lt >= content_start else "DSML text"
        raise DSMLParseError(f"{what} outside a {TOOL_CALLS_OPEN} block", max(lt, content_start),
                             DSML)
    j = at + len(DSML)
    while j < end and (text[j].isalnum() or text[j] in "_-"):
        j += 1
    name = text[at + len(DSML):j]
    tag = f"<{DSML}{name}"
    if name != TOOL_CALLS_BLOCK:
        if j == end and TOOL_CALLS_BLOCK.startswith(name):
            raise DSMLParseError(f"the turn ends inside {TOOL_CALLS_OPEN}", lt, tag)
        if _block_key(name) not in _MISSPELT_BLOCKS:
            raise DSMLParseError(f"expected {TOOL_CALLS_OPEN} to open the tool-call block, "
                                 f"found DSML tag {name!r}", lt, tag)
        if not lenient:
            raise DSMLParseError(f"misspelled block name {name!r}: V4 writes "
                                 f"{TOOL_CALLS_BLOCK!r} (parse(..., lenient=True) accepts it)",
                                 lt, tag)
        repairs.append(f"block name {name!r} read as {TOOL_CALLS_BLOCK!r}")
    content_end = lt
    if lt - 2 >= content_start and text[lt - 2:lt] == "\n\n":
        content_end = lt - 2
    elif not lenient:
        raise DSMLParseError(f"the {TOOL_CALLS_OPEN} block must follow a blank line "
                             f"(\\n\\n) (parse(..., lenient=True) accepts it)", lt, tag)
    else:
        repairs.append("no blank line before the tool_calls block")
    calls = _DSMLReader(text, lt, end, name).read_block()
    return ParsedMessage(reasoning, text[content_start:content_end], calls, repairs)


def _reject_constant(name: str):
    """json.loads hook: NaN and Infinity are Python extensions, not JSON."""
    raise ValueError(f"{name} is not valid JSON")


class _DSMLReader:
    """A cursor over ``text[pos:end]`` that reads one DSML block, tag by tag.

    Grammar (``ws`` = optional whitespace; BLOCK is ``tool_calls`` unless parse is lenient)::

        block     := '<｜DSML｜' BLOCK '>' (ws invoke)+ ws '</｜DSML｜' BLOCK '>' ws <end>
        invoke    := INVOKE_OPEN ' name="' NAME '">' (ws parameter)* ws INVOKE_CLOSE
        parameter := PARAMETER_OPEN ' name="' NAME '" string="' (true|false) '">' VALUE
                     PARAMETER_CLOSE
    """

    def __init__(self, text: str, pos: int, end: int, block: str = TOOL_CALLS_BLOCK):
        self.text, self.pos, self.end = text, pos, end
        self.open_tag, self.close_tag = f"<{DSML}{block}>", f"</{DSML}{block}>"

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
        self.expect(self.open_tag, self.open_tag)
        calls = []
        while True:
            self.skip_whitespace()
            if self.at(INVOKE_OPEN):
                calls.append(self.read_invoke())
            elif self.at(self.close_tag):
                if not calls:
                    raise self.error("tool_calls block without any invoke", self.open_tag)
                self.pos += len(self.close_tag)
                break
            else:
                raise self.error(f"expected {INVOKE_OPEN!r} or {self.close_tag!r}",
                                 self.open_tag)
        self.skip_whitespace()
        if self.pos != self.end:
            raise self.error("unexpected text after the tool_calls block", self.close_tag)
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


__all__ = ["to_json", "call_arguments", "as_openai_call", "render_tool_calls", "tool_calls_block",
           "DSMLParseError", "ParsedMessage", "parse"]
