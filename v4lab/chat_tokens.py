"""The token strings of the DeepSeek-V4 chat format (spec section 9), character for character.

The turn and thinking markers, the task tokens, the DSML tags of a tool-call block and the
tool-result wrapper.  The encoder (:mod:`v4lab.chat`), the DSML renderer and parser
(:mod:`v4lab.dsml`) and the tokenizers (:mod:`v4lab.tokenizer`) all read them from here;
``from v4lab.chat import BOS`` keeps working.  "｜" is U+FF5C (full-width bar), "▁" is U+2581.
"""
from __future__ import annotations

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TASK_TOKENS = ("<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜title｜>",
               "<｜read_url｜>")
# The `task` key of a message names one of these; the token follows that message.
TASKS = dict(zip(("action", "query", "authority", "domain", "title", "read_url"), TASK_TOKENS))

# DSML tags. Invoke and parameter openers carry attributes: `<｜DSML｜invoke name="...">`.
DSML = "｜DSML｜"
TOOL_CALLS_BLOCK = "tool_calls"  # V3.2 called the block "function_calls"
TOOL_CALLS_OPEN = f"<{DSML}{TOOL_CALLS_BLOCK}>"
TOOL_CALLS_CLOSE = f"</{DSML}{TOOL_CALLS_BLOCK}>"
INVOKE_OPEN = f"<{DSML}invoke"
INVOKE_CLOSE = f"</{DSML}invoke>"
PARAMETER_OPEN = f"<{DSML}parameter"
PARAMETER_CLOSE = f"</{DSML}parameter>"
TOOL_CALLS_START = f"\n\n<{DSML}{TOOL_CALLS_BLOCK}"  # where content ends and the block begins

TOOL_RESULT_OPEN = "<tool_result>"
TOOL_RESULT_CLOSE = "</tool_result>"

__all__ = [
    "BOS", "EOS", "USER", "ASSISTANT", "LATEST_REMINDER", "THINK_OPEN", "THINK_CLOSE",
    "TASK_TOKENS", "TASKS", "DSML", "TOOL_CALLS_BLOCK", "TOOL_CALLS_OPEN", "TOOL_CALLS_CLOSE",
    "INVOKE_OPEN", "INVOKE_CLOSE", "PARAMETER_OPEN", "PARAMETER_CLOSE", "TOOL_CALLS_START",
    "TOOL_RESULT_OPEN", "TOOL_RESULT_CLOSE",
]
