"""Prompt templates: named, custom and chat."""

import pytest

from pillion.data.templates import TEMPLATES, render_prompt, resolve_template
from pillion.problem import Problem

PROBLEM = Problem(id="t/1", question="What is 3+5?", answer="8")


class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        turns = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return turns + "<assistant>"


def test_named_templates():
    assert render_prompt(PROBLEM, "qa") == "Q: What is 3+5?\nA:"
    plain = render_prompt(PROBLEM)  # default "plain"
    assert plain.startswith("Question: What is 3+5?\n") and "\\boxed{}" in plain
    assert set(TEMPLATES) >= {"plain", "chat", "qa"}


def test_custom_template_keeps_braces():
    text = render_prompt(PROBLEM, "Solve: {question} Put it in \\boxed{}.")
    assert text == "Solve: What is 3+5? Put it in \\boxed{}."
    with pytest.raises(ValueError, match="unknown template"):
        resolve_template("no placeholder")


def test_chat_uses_the_tokenizer():
    text = render_prompt(PROBLEM, "chat", tokenizer=FakeTokenizer())
    assert text.startswith("<user>What is 3+5?\nPlease reason step by step")
    assert text.endswith("</user><assistant>")
    with pytest.raises(ValueError, match="tokenizer"):
        render_prompt(PROBLEM, "chat")
    # plain templates ignore a tokenizer
    assert render_prompt(PROBLEM, "qa", tokenizer=FakeTokenizer()) == "Q: What is 3+5?\nA:"


CODE = Problem(id="c/1", question="Write add(a, b).", answer="", kind="code", tests=["assert add(1, 2) == 3"])


def test_code_problems_ask_for_a_python_block():
    from pillion.data.templates import CODE_TEMPLATES

    assert set(CODE_TEMPLATES) == set(TEMPLATES)  # every named template has a code version
    plain = render_prompt(CODE)
    assert plain.startswith("Question: Write add(a, b).\n") and "```python" in plain and "boxed" not in plain
    chat = render_prompt(CODE, "chat", tokenizer=FakeTokenizer())
    assert chat.startswith("<user>Write add(a, b).\nWrite the solution in Python in one ```python code block")
    assert render_prompt(CODE, "qa") == "Q: Write add(a, b).\nA:"
    # HumanEval completion style: the function prompt alone; a custom string is the same for both kinds
    assert render_prompt(CODE, "completion") == "Write add(a, b)." == render_prompt(CODE, "{question}")
    assert render_prompt(PROBLEM, "completion") == "What is 3+5?"
