r"""Prompt templates: how a Problem's question becomes the text a model is prompted with.

A template is a config value: either a name from `TEMPLATES` or a custom string containing
`{question}`. The placeholder is replaced literally (not with `str.format`), so a custom
template may contain `\boxed{}` without escaping braces. Store `resolve_template(value)` with
a run, so the exact text survives later edits of this table.

Code problems (`Problem.kind == "code"`) use the code version of a named template
(`CODE_TEMPLATES`): the problem, then the request for one ```python block, which is what the
code reward grades. "completion" is the question alone, for HumanEval's completion style
(a base model continues the function prompt). A custom string is used as given for both kinds.

The template named "chat" is sent through the tokenizer's own chat template as one user turn
(`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`); any
object with that method works. Every other template is plain text and ignores the tokenizer.
"""

from __future__ import annotations

from typing import Any

from pillion.problem import Problem

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# algo=tool (pillion/rollout/tools.py): the markers the engine runs code on.
TOOL_INSTRUCTION = ("You may run Python: write a ```python block, then ```output on the next line, "
                    "and the program's output will follow.")
CODE_INSTRUCTION = ("Write the solution in Python in one ```python code block: the function asked for, "
                    "or else a program that reads standard input and prints the answer.")

TEMPLATES: dict[str, str] = {
    # Base models: a question/answer frame with the boxed instruction.
    "plain": "Question: {question}\n" + BOXED_INSTRUCTION + "\nAnswer:",
    # Instruct models: the user turn; the tokenizer's chat template adds the roles.
    "chat": "{question}\n" + BOXED_INSTRUCTION,
    # Tiny character-level models (the embedded CPU default): every character is a token, so no
    # instruction; the synthetic solutions already end in \boxed{}.
    "qa": "Q: {question}\nA:",
    # HumanEval's completion style: the prompt alone, which the model continues.
    "completion": "{question}",
    # Base models with the Python tool (algo=tool): the plain frame, the tool offered.
    "tool": "Question: {question}\n" + TOOL_INSTRUCTION + " " + BOXED_INSTRUCTION + "\nAnswer:",
}

# The same names for code problems: the problem, then a ```python block is asked for.
CODE_TEMPLATES: dict[str, str] = {
    "plain": "Question: {question}\n" + CODE_INSTRUCTION + "\nAnswer:",
    "chat": "{question}\n" + CODE_INSTRUCTION,
    # The synthetic code curriculum states the function to write; its solutions are ```python blocks.
    "qa": "Q: {question}\nA:",
    "completion": "{question}",
    "tool": "Question: {question}\n" + TOOL_INSTRUCTION + " " + CODE_INSTRUCTION + "\nAnswer:",
}

CHAT_TEMPLATE_NAME = "chat"
# How a grader finds the final answer in completions to these templates (`RewardConfig.answer_style`):
# the math templates ask for \boxed{}, and the synthetic solutions "qa" models learn end in one.
ANSWER_STYLE = "boxed"


def resolve_template(template: str, kind: str = "math") -> str:
    """The template text for a name in TEMPLATES (CODE_TEMPLATES for kind "code") or a custom
    string containing {question}."""
    if template in TEMPLATES:
        return CODE_TEMPLATES[template] if kind == "code" else TEMPLATES[template]
    if "{question}" not in template:
        raise ValueError(f"unknown template {template!r}: use one of {sorted(TEMPLATES)} "
                         "or a string containing {question}")
    return template


# A step row's field (`pillion data swirl`, data/swirl.py): the response so far, before the step's
# action. It follows the rendered prompt, so that sampling and training start from the step.
STEP_CONTEXT = "step_context"


def render_prompt(problem: Problem, template: str = "plain", tokenizer: Any = None) -> str:
    """The prompt text for `problem` under `template` (see the module docstring), followed by
    its step context when it is a step row."""
    text = resolve_template(template, problem.kind).replace("{question}", problem.question)
    context = problem.meta.get(STEP_CONTEXT) or ""
    if template != CHAT_TEMPLATE_NAME:
        return text + context
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("template 'chat' needs a tokenizer with apply_chat_template")
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + context
