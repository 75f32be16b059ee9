"""The student's chat template (`rollout.chat_template`): the tokenizer's own, a file, or a packaged
one; and the text it forces into the assistant turn, which the rewards score with the completion."""

import pytest

from rlkd_ray.config import ConfigError
from rlkd_ray.controller.prompt_source import chat_messages, forced_prefix, student_tokenizer


def test_own_template_forces_nothing(student_path):
    assert forced_prefix(student_tokenizer(student_path, None)) == ""  # SmolLM2: ChatML


def test_a_template_file_that_opens_the_reasoning(student_path, tmp_path):
    """DeepSeek's R1-Distill template ends the generation prompt in `<think>\\n`; so does this one."""
    own = student_tokenizer(student_path, None).chat_template
    path = tmp_path / "think.jinja"
    path.write_text(own.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'"))
    tok = student_tokenizer(student_path, str(path))
    assert forced_prefix(tok) == "<think>\n"
    text = tok.apply_chat_template(chat_messages("sys", "2+2?"), tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_packaged_r1_distill_template(student_path):
    """The R1-Distill turns with `<think>` left to the model, as the RLKD release trains."""
    tok = student_tokenizer(student_path, "r1_distill")
    text = tok.apply_chat_template(chat_messages("Be brief.", "2+2?"), tokenize=False, add_generation_prompt=True)
    assert text == f"{tok.bos_token}Be brief.<｜User｜>2+2?<｜Assistant｜>"
    assert forced_prefix(tok) == ""


def test_unknown_template_names_the_key(student_path):
    with pytest.raises(ConfigError, match=r"'rollout.chat_template' is 'nope.jinja'.*r1_distill"):
        student_tokenizer(student_path, "nope.jinja")
