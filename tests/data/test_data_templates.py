"""Prompt templates: named, custom and chat."""

import pytest

from pillion.data.problem import Problem
from pillion.data.templates import TEMPLATES, render_prompt, resolve_template

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
