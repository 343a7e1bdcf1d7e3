"""The DeepSeek-V4 chat format (spec section 9): render prompts, parse what the model writes.

:func:`encode_messages` renders a conversation in DeepSeek's own input format (OpenAI-style
messages) byte for byte as DeepSeek's V4 encoder does; the golden vectors in
``shared/spec/chat-golden/`` check it.  :func:`render` is the friendly entry point on top of it
(a ``tools=`` argument, ``thinking=True/False``, flat tool calls).  A prompt is one string; the
pieces follow each other with no separator unless one is shown::

    <｜begin▁of▁sentence｜>                       BOS (left out when a context is given)
    [reasoning-effort paragraph "\\n\\n"]         thinking mode only; tiers depend on generation
    system text ["\\n\\n" tools section] ["\\n\\n" response-format section]
    <｜latest_reminder｜>text                     a latest_reminder message
    <｜User｜>user text                           consecutive user messages and tool results
                                                 (<tool_result>...</tool_result>) are joined
                                                 by blank lines into one user turn
    <｜User｜>developer text [tools] [format]      a developer message is a user turn too
    <｜Assistant｜><think>  |  <｜Assistant｜></think>
    [reasoning</think>]content[DSML block]<｜end▁of▁sentence｜>
    ...
    <｜User｜>last user text<｜Assistant｜><think>  the generation prompt (</think> in chat mode)

An assistant turn that calls tools ends its content with a DSML block (``\\n\\n`` first,
``<｜DSML｜tool_calls>`` ... ``</｜DSML｜tool_calls>``); :mod:`v4lab.dsml` writes and reads it.

Reasoning retention (thinking mode, ``drop_thinking=True``): the reasoning of assistant turns
before the last user (or developer) turn is dropped, and so are developer messages before it.
Tool results count as a user turn, so without tool definitions the reasoning of a turn that
called a tool is dropped once its results arrive.  If any message defines ``tools``, nothing is
dropped: an agent sees its earlier thoughts across tool calls and user turns.

Public API: :func:`encode_messages`, :func:`render`, :func:`render_assistant` (one assistant
turn as the model emits it), :func:`render_tools_section` and the option tables; re-exported
here from where they are defined: the token strings (:mod:`v4lab.chat_tokens`),
:func:`render_tool_calls` (the DSML block), :func:`parse` (model output back to reasoning,
content and tool calls), :class:`ParsedMessage` and :class:`DSMLParseError`
(:mod:`v4lab.dsml`).  The token strings and the fixed texts (tools section, response-format
section, reasoning-effort paragraphs) are DeepSeek's, character for character.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

from .chat_tokens import (ASSISTANT, BOS, DSML, EOS, INVOKE_CLOSE, INVOKE_OPEN,  # noqa: F401
                          LATEST_REMINDER, PARAMETER_CLOSE, PARAMETER_OPEN, TASK_TOKENS, TASKS,
                          THINK_CLOSE, THINK_OPEN, TOOL_CALLS_BLOCK, TOOL_CALLS_CLOSE,
                          TOOL_CALLS_OPEN, TOOL_CALLS_START, TOOL_RESULT_CLOSE, TOOL_RESULT_OPEN,
                          USER)
from .dsml import (DSMLParseError, ParsedMessage, as_openai_call, call_arguments,  # noqa: F401
                   parse, render_tool_calls, tool_calls_block, to_json)

# ----------------------------------------------------------------------------------------------
# Options and DeepSeek's fixed texts

ROLES = ("system", "developer", "user", "assistant", "tool", "latest_reminder")
THINKING_MODES = ("thinking", "chat")
GENERATIONS = ("v4", "v4-0731")

# Reasoning-effort paragraphs (thinking mode only, at the very start of the prompt, followed by
# a blank line).  The original V4 release knows one: "max".  The 0731 checkpoint has three
# tiers: "low" (nothing, the default), "high" (the old "max" text) and a new "max".
REASONING_EFFORT_MAX = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate "
    "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption "
    "is left unchecked."
)
REASONING_EFFORT_BEYOND_MAX = (
    "Reasoning Effort: Beyond maximum \u2014 exhaustive, relentless, and uncompromising.\n"
    "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: "
    "exhaustively decompose the problem into its most fundamental components, trace every "
    "causal chain to its root, and resolve the underlying cause rather than any surface "
    "symptom.\n"
    "Do not stop reasoning until you have independently verified the solution from multiple "
    "angles and are certain that no assumption remains unchecked and no error remains "
    "undiscovered."
)
# generation -> {reasoning_effort: paragraph}; None is each generation's default.
REASONING_EFFORT_PROMPTS = {
    "v4": {None: "", "high": "", "max": REASONING_EFFORT_MAX},
    "v4-0731": {None: "", "low": "", "high": REASONING_EFFORT_MAX,
                "max": REASONING_EFFORT_BEYOND_MAX},
}

TOOLS_SECTION = f"""## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by \
writing a "<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types \
(numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK_OPEN}), you MUST output your complete reasoning \
inside {THINK_OPEN}...{THINK_CLOSE} BEFORE any tool calls or final response.

Otherwise, output directly after {THINK_CLOSE} with tool calls or final response.

### Available Tool Schemas

{{schemas}}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""

RESPONSE_FORMAT_SECTION = ("## Response Format:\n\nYou MUST strictly adhere to the following "
                           "schema to reply:\n{schema}")


# ----------------------------------------------------------------------------------------------
# encode_messages: DeepSeek's input format, byte for byte


def encode_messages(messages: Iterable[dict], thinking_mode: str = "thinking",
                    reasoning_effort: str | None = None, generation: str = "v4",
                    drop_thinking: bool = True, add_default_bos_token: bool = True,
                    context: Iterable[dict] | None = None) -> str:
    """The prompt DeepSeek's V4 encoder renders for ``messages`` (layout in the module doc).

    ``messages``: OpenAI-style dicts with ``role`` in :data:`ROLES`.  ``system`` and
    ``developer`` messages may define ``tools`` (OpenAI tool definitions) and a
    ``response_format``; assistant messages carry ``reasoning_content``, ``content`` and
    ``tool_calls`` (``{"id", "type": "function", "function": {"name", "arguments"}}``, the
    arguments a JSON object as a string or a dict) and may set ``wo_eos`` (no EOS after the
    turn); tool messages carry ``content`` (any value: strings as they are, a list of
    ``{"type": "text"}`` parts joined by blank lines, anything else as Python's ``str()``)
    and ``tool_call_id``; any message may set ``task`` (a key of :data:`TASKS`) to end
    with that task token instead of the generation prompt.

    ``thinking_mode``: ``"thinking"`` or ``"chat"``; ``reasoning_effort``: a key of
    ``REASONING_EFFORT_PROMPTS[generation]``; ``generation``: ``"v4"`` (V4-Flash / V4-Pro) or
    ``"v4-0731"`` (V4-Flash-0731).  ``drop_thinking``: drop earlier reasoning as the module
    doc says (never when tools are defined).  ``context``: messages already in the model's
    cache; they shape the prompt (tool-result order, what counts as history) but are not
    rendered, and neither is BOS.

    Raises ``ValueError`` naming the problem for an unknown role, option, task or effort, and
    for messages the format cannot express.  Arguments that are not valid JSON raise in
    ``"v4-0731"`` (as its encoder does) and become one raw parameter named ``arguments`` in
    ``"v4"`` (as its encoder does).  Deliberate differences from DeepSeek's code, where it
    would write a prompt that cannot be parsed back or fail with an internal error: arguments
    that decode to something else than an object, NaN or infinite values, and names with
    quotes, angle brackets or newlines raise; a dict of arguments renders like the same
    object given as a JSON string (the original V4 encoder nests it under ``arguments``).
    """
    _check_options(thinking_mode, reasoning_effort, generation)
    thinking = thinking_mode == "thinking"
    raw = generation == "v4"  # the V4 encoder keeps arguments that are not JSON as one string
    context = _check_messages(context or [], "context message", raw)
    messages = _check_messages(messages, "message", raw)

    history, turns = _merge_tool_messages(context), _merge_tool_messages(messages)
    full = _order_tool_results(history + turns)
    drop = drop_thinking and not any(m.get("tools") for m in full)
    first = len(history)
    if thinking and drop:
        full, first = _drop_history(full), len(_drop_history(history))

    last_user = _last_user_index(full)
    effort = REASONING_EFFORT_PROMPTS[generation][reasoning_effort]
    prompt = BOS if add_default_bos_token and not context else ""
    for i in range(first, len(full)):
        if i == 0 and thinking and effort:
            prompt += effort + "\n\n"
        prompt += _render_turn(i, full, thinking, drop, last_user, raw)
    return prompt


def _check_options(thinking_mode: Any, reasoning_effort: Any, generation: Any) -> None:
    if generation not in GENERATIONS:
        raise ValueError(f"unknown generation {generation!r}; expected one of {GENERATIONS}")
    if thinking_mode not in THINKING_MODES:
        raise ValueError(f"unknown thinking_mode {thinking_mode!r}; "
                         f"expected one of {THINKING_MODES}")
    efforts = tuple(REASONING_EFFORT_PROMPTS[generation])
    if reasoning_effort not in efforts:
        raise ValueError(f"unknown reasoning_effort {reasoning_effort!r} for generation "
                         f"{generation!r}; expected one of {efforts}")


def _check_messages(messages: Iterable[dict], what: str, raw: bool = False) -> list[dict]:
    """The messages as a list, after checking every part the encoder reads."""
    messages = list(messages)
    for i, m in enumerate(messages):
        where = f"{what} {i}"
        if not isinstance(m, dict):
            raise ValueError(f"{where} must be a dict, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r}; expected one of {ROLES}")
        if "reasoning" in m:
            raise ValueError(f"{where}: DeepSeek's format names the reasoning "
                             f"'reasoning_content', not 'reasoning'")
        if "content_blocks" in m:
            raise ValueError(f"{where}: 'content_blocks' is not an input key; give user text "
                             f"as 'content' and tool results as tool messages")
        task = m.get("task")
        if task is not None and task not in TASKS:
            raise ValueError(f"{where}: unknown task {task!r}; expected one of {tuple(TASKS)}")
        for key in ("tools", "response_format"):
            if m.get(key) and role not in ("system", "developer"):
                raise ValueError(f"{where}: {key!r} belongs on a system or developer message, "
                                 f"not on a {role} message")
        content = m.get("content")
        if role == "tool":
            if not isinstance(m.get("tool_call_id"), (str, type(None))):
                raise ValueError(f"{where}: tool_call_id must be a string")
            if isinstance(content, list):
                if not all(isinstance(b, dict) for b in content):
                    raise ValueError(f"{where}: a list of tool-result parts must hold dicts")
                for b in content:
                    if b.get("type") == "text" and not isinstance(b.get("text", ""), str):
                        raise ValueError(f"{where}: the text of a tool-result part must be a "
                                         f"string, got {type(b.get('text')).__name__}")
        elif role == "developer":
            if not isinstance(content, str) or not content:
                raise ValueError(f"{where}: a developer message needs non-empty string content")
        elif role in ("user", "latest_reminder") or content is not None:
            if not isinstance(content, str) and not (role == "user" and "content" not in m):
                raise ValueError(f"{where}: {role} content must be a string, "
                                 f"got {type(content).__name__}")
        if m.get("tools"):
            _tool_schemas(m["tools"], where)
        if m.get("response_format"):
            to_json(m["response_format"], f"{where}: response_format", allow_nan=True)
        if role == "assistant":
            if m.get("reasoning_content") is not None and not isinstance(
                    m["reasoning_content"], str):
                raise ValueError(f"{where}: reasoning_content must be a string")
            for call in m.get("tool_calls") or []:
                call_arguments(call, where, raw)
        elif m.get("tool_calls"):
            raise ValueError(f"{where}: only assistant messages make tool calls")
    return messages


def _tool_schemas(tools: Any, where: str) -> list[str]:
    """One JSON line per tool definition: its ``function`` object."""
    if not isinstance(tools, list):
        raise ValueError(f"{where}: tools must be a list of tool definitions")
    lines = []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise ValueError(f"{where}: tool {k} must be an OpenAI tool definition "
                             f'{{"type": "function", "function": {{...}}}}, got {tool!r}')
        lines.append(to_json(tool["function"], f"{where}: tool {k}", allow_nan=True))
    return lines


def _merge_tool_messages(messages: list[dict]) -> list[dict]:
    """Copies of the messages with tool results merged into user turns.

    A tool message joins the user turn just before it, or starts one.  A user message joins
    the user turn just before it unless that turn has a task.  Each user turn holds its parts
    under ``"_parts"``: ``("text", str)`` or ``("tool_result", tool_call_id, content)``.
    """
    merged: list[dict] = []
    for m in messages:
        m = copy.deepcopy(m)
        joins = bool(merged) and merged[-1]["role"] == "user"
        if m["role"] == "tool":
            part = ("tool_result", m.get("tool_call_id", ""), m.get("content", ""))
            if joins:
                merged[-1]["_parts"].append(part)
            else:
                merged.append({"role": "user", "_parts": [part]})
        elif m["role"] == "user":
            part = ("text", m.get("content", ""))
            if joins and merged[-1].get("task") is None:
                merged[-1]["_parts"].append(part)
            else:
                turn = {"role": "user", "_parts": [part]}
                for key in ("task", "wo_eos"):
                    if key in m:
                        turn[key] = m[key]
                merged.append(turn)
        else:
            merged.append(m)
    return merged


def _order_tool_results(turns: list[dict]) -> list[dict]:
    """Sort the tool results of each user turn into the order of the latest calls.

    The order comes from the ids of the last assistant turn that made calls; a result whose
    id is missing or unknown sorts as if it answered the first call (the sort is stable).
    Other parts keep their places.
    """
    order: dict = {}
    for m in turns:
        if m["role"] == "assistant" and m.get("tool_calls"):
            order = {}
            for k, call in enumerate(m["tool_calls"]):
                call_id = call.get("id") or call.get("function", {}).get("id")
                if call_id:
                    order[call_id] = k
        elif m["role"] == "user" and order:
            slots = [k for k, p in enumerate(m["_parts"]) if p[0] == "tool_result"]
            if len(slots) > 1:
                results = sorted((m["_parts"][k] for k in slots),
                                 key=lambda p: order.get(p[1], 0))
                for k, part in zip(slots, results):
                    m["_parts"][k] = part
    return turns


def _last_user_index(turns: list[dict]) -> int:
    return max((i for i, m in enumerate(turns) if m["role"] in ("user", "developer")),
               default=-1)


def _drop_history(turns: list[dict]) -> list[dict]:
    """Before the last user turn: assistant turns lose their reasoning, developer turns go."""
    last = _last_user_index(turns)
    kept = []
    for i, m in enumerate(turns):
        if i >= last or m["role"] in ("user", "system", "latest_reminder"):
            kept.append(m)
        elif m["role"] == "assistant":
            kept.append({k: v for k, v in m.items() if k != "reasoning_content"})
    return kept


def _tool_result_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: the text ones
        content = "\n\n".join(p.get("text", "") if p.get("type") == "text"
                              else f"[Unsupported {p.get('type')}]" for p in content)
    return TOOL_RESULT_OPEN + str(content) + TOOL_RESULT_CLOSE


def _header_sections(m: dict, where: str) -> str:
    """The tools and response-format sections a system or developer message adds."""
    out = ""
    if m.get("tools"):
        out += "\n\n" + TOOLS_SECTION.replace("{schemas}", "\n".join(_tool_schemas(m["tools"],
                                                                                  where)))
    if m.get("response_format"):
        out += "\n\n" + RESPONSE_FORMAT_SECTION.format(
            schema=to_json(m["response_format"], where, allow_nan=True))
    return out


def _render_turn(i: int, turns: list[dict], thinking: bool, drop: bool, last_user: int,
                 raw: bool) -> str:
    m = turns[i]
    role = m["role"]
    where = f"turn {i}"
    if role == "system":
        out = (m.get("content") or "") + _header_sections(m, where)
    elif role == "developer":
        out = USER + m["content"] + _header_sections(m, where)
    elif role == "user":
        out = USER + "\n\n".join(p[1] if p[0] == "text" else _tool_result_text(p[2])
                                 for p in m["_parts"])
    elif role == "latest_reminder":
        out = LATEST_REMINDER + m["content"]
    else:  # assistant
        out = ""
        after_task = i > 0 and turns[i - 1].get("task") is not None
        if thinking and not after_task and (not drop or i > last_user):
            out += (m.get("reasoning_content") or "") + THINK_CLOSE
        out += m.get("content") or ""
        if m.get("tool_calls"):
            out += tool_calls_block(m["tool_calls"], raw)
        if not m.get("wo_eos", False):
            out += EOS

    # What follows the turn: nothing when another non-assistant turn comes next; else the
    # task token, or (after a user or developer turn) the assistant marker.
    if i + 1 < len(turns) and turns[i + 1]["role"] not in ("assistant", "latest_reminder"):
        return out
    task = m.get("task")
    if task == "action":
        out += ASSISTANT + (THINK_OPEN if thinking else THINK_CLOSE) + TASKS[task]
    elif task is not None:
        out += TASKS[task]
    elif role in ("user", "developer"):
        opens = thinking and (not drop or i >= last_user)
        out += ASSISTANT + (THINK_OPEN if opens else THINK_CLOSE)
    return out


# ----------------------------------------------------------------------------------------------
# The friendly entry point and the pieces of an assistant turn


def render(messages: Iterable[dict], tools: list[dict] | None = None, thinking: bool = True,
           reasoning_effort: str | None = None, generation: str = "v4",
           drop_thinking: bool = True) -> str:
    """Render a conversation as one V4 prompt string: :func:`encode_messages` plus conveniences.

    On top of DeepSeek's input format, ``render`` accepts: ``tools`` as an argument (added to
    the first message when it is a system message, else in a new empty system message first,
    as a server does); tool definitions given as bare function objects; ``reasoning`` as
    another name for ``reasoning_content``; flat tool calls ``{"name", "arguments"}``; and
    tool results that are not strings (written as JSON, where DeepSeek's encoder writes
    Python's ``str()``).  ``thinking`` picks thinking or chat mode.

    When the last message is not an assistant turn, the prompt ends with the generation prompt
    ``<｜Assistant｜><think>`` (or ``</think>``); otherwise it ends with that turn's EOS.
    """
    messages = [_friendly_message(i, m) for i, m in enumerate(messages)]
    if tools:
        tools = [_friendly_tool(t) for t in tools]
        if messages and messages[0]["role"] == "system":
            messages[0]["tools"] = list(messages[0].get("tools") or []) + tools
        else:
            messages.insert(0, {"role": "system", "content": "", "tools": tools})
    return encode_messages(messages, thinking_mode="thinking" if thinking else "chat",
                           reasoning_effort=reasoning_effort, generation=generation,
                           drop_thinking=drop_thinking)


def _friendly_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and "function" not in tool and "name" in tool:
        return {"type": "function", "function": tool}
    return tool


def _friendly_message(i: int, m: Any) -> Any:
    if not isinstance(m, dict):
        return m
    m = dict(m)
    if "reasoning" in m:
        reasoning = m.pop("reasoning")
        m.setdefault("reasoning_content", reasoning)
    if m.get("tools"):
        m["tools"] = [_friendly_tool(t) for t in m["tools"]]
    if m.get("tool_calls"):
        m["tool_calls"] = [as_openai_call(c) for c in m["tool_calls"]]
    if m.get("role") == "tool" and not isinstance(m.get("content"), (str, list)):
        content = m.get("content")
        m["content"] = "" if content is None else to_json(content, f"message {i}: tool result")
    return m


def render_assistant(message: dict, thinking: bool = True) -> str:
    """One assistant turn as the model emits it after ``<｜Assistant｜><think>``.

    ``reasoning</think>content[DSML block]<｜end▁of▁sentence｜>``; with ``thinking=False``
    (chat mode, or reasoning dropped from history) the reasoning and ``</think>`` are left out.
    ``parse(render_assistant(m))`` gives back the reasoning, content and tool calls of ``m``.
    """
    m = _friendly_message(0, message)
    out = ""
    if thinking:
        out += (m.get("reasoning_content") or "") + THINK_CLOSE
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"assistant content must be a string, got {type(content).__name__}")
    out += content or ""
    if m.get("tool_calls"):
        out += render_tool_calls(m["tool_calls"])
    return out + EOS


def render_tools_section(tools: list[dict]) -> str:
    """The tools section (DeepSeek's text, ending in a newline) for OpenAI tool definitions."""
    return TOOLS_SECTION.replace("{schemas}", "\n".join(
        _tool_schemas([_friendly_tool(t) for t in tools], "tools")))


__all__ = [
    "BOS", "EOS", "USER", "ASSISTANT", "LATEST_REMINDER", "THINK_OPEN", "THINK_CLOSE",
    "TASK_TOKENS", "TASKS", "DSML", "TOOL_CALLS_OPEN", "TOOL_CALLS_CLOSE", "INVOKE_OPEN",
    "INVOKE_CLOSE", "PARAMETER_OPEN", "PARAMETER_CLOSE", "TOOL_CALLS_START", "TOOL_RESULT_OPEN",
    "TOOL_RESULT_CLOSE", "ROLES", "THINKING_MODES", "GENERATIONS", "REASONING_EFFORT_MAX",
    "REASONING_EFFORT_BEYOND_MAX", "REASONING_EFFORT_PROMPTS", "TOOLS_SECTION",
    "RESPONSE_FORMAT_SECTION", "DSMLParseError", "ParsedMessage", "encode_messages", "render",
    "render_assistant", "render_tool_calls", "render_tools_section", "parse",
]
