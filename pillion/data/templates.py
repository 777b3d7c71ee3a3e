r"""Prompt templates: how a Problem's question becomes the text a model is prompted with.

A template is a config value: either a name from `TEMPLATES` or a custom string containing
`{question}`. The placeholder is replaced literally (not with `str.format`), so a custom
template may contain `\boxed{}` without escaping braces. Store `resolve_template(value)` with
a run, so the exact text survives later edits of this table.

The template named "chat" is sent through the tokenizer's own chat template as one user turn
(`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`); any
object with that method works. Every other template is plain text and ignores the tokenizer.
"""

from __future__ import annotations

from typing import Any

from pillion.data.problem import Problem

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

TEMPLATES: dict[str, str] = {
    # Base models: a question/answer frame with the boxed instruction.
    "plain": "Question: {question}\n" + BOXED_INSTRUCTION + "\nAnswer:",
    # Instruct models: the user turn; the tokenizer's chat template adds the roles.
    "chat": "{question}\n" + BOXED_INSTRUCTION,
    # Tiny character-level models (the embedded CPU default): every character is a token, so no
    # instruction; the synthetic solutions already end in \boxed{}.
    "qa": "Q: {question}\nA:",
}

CHAT_TEMPLATE_NAME = "chat"


def resolve_template(template: str) -> str:
    """The template text for a name in TEMPLATES or a custom string containing {question}."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{question}" not in template:
        raise ValueError(f"unknown template {template!r}: use one of {sorted(TEMPLATES)} "
                         "or a string containing {question}")
    return template


def render_prompt(problem: Problem, template: str = "plain", tokenizer: Any = None) -> str:
    """The prompt text for `problem` under `template` (see the module docstring)."""
    text = resolve_template(template).replace("{question}", problem.question)
    if template != CHAT_TEMPLATE_NAME:
        return text
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("template 'chat' needs a tokenizer with apply_chat_template")
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
