"""The shuffled-teacher control and the no-signal share of a batch."""

from collections import Counter

from rlkd_ray.config import ArithConfig
from rlkd_ray.controller.metrics import batch_metrics
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.data.arith import split_rows
from rlkd_ray.data.structure_control import shuffled_structures
from rlkd_ray.gsrm.parser import parse_structure


def steps(text):
    return len(parse_structure(text).steps)


def test_shuffled_structures_keep_step_counts_and_move_every_structure():
    rows = split_rows(ArithConfig(train_size=300, test_size=50, hard_size=20), "train")
    own = [r["teacher_structure"] for r in rows]
    mixed = shuffled_structures(own, seed=3)
    assert Counter(mixed) == Counter(own)  # a permutation: nothing dropped or duplicated
    assert [steps(t) for t in mixed] == [steps(t) for t in own]  # the same number of steps each
    classes = Counter(steps(t) for t in own)
    for i, (a, b) in enumerate(zip(own, mixed)):
        if classes[steps(a)] > 1:
            assert a != b, f"problem {i} kept its own teacher structure"
    assert shuffled_structures(own, seed=3) == mixed  # seeded
    assert shuffled_structures(own, seed=4) != mixed


def test_shuffled_structures_leave_missing_and_singletons():
    one = "[sub-think 1]: a\n[Query 1]: 1 + 1\n[Answer 1]: 2\nSo the final answer is: 2"
    assert shuffled_structures([None, one, ""], seed=0) == [None, one, ""]


def _group(uid, totals):
    samples = [Sample([1], [0.0], "x", "stop", 0, rewards={"accuracy": 0.0}, total=t) for t in totals]
    return PromptGroup(uid, 0, Problem(uid, "p", "1"), [1], 0, samples=samples)


def test_zero_signal_groups_is_the_share_of_groups_with_equal_rewards():
    m = batch_metrics([_group("a", [1.0, 1.0, 1.0]), _group("b", [0.0, 1.0, 1.0]),
                       _group("c", [0.0, 0.0, 0.0]), _group("d", [2.0, 0.5, 0.5])], learner_version=0)
    assert m["batch/zero_signal_groups"] == 0.5
