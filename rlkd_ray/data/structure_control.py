"""The shuffled-teacher control of the miniature experiment: each training problem gets the teacher
structure of another problem with the same number of steps. It answers whether it is the teacher's
own structure that helps, or any step-shaped reward of the same length."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

from rlkd_ray.gsrm.parser import parse_structure


def shuffled_structures(structures: Sequence[Optional[str]], seed: int) -> List[Optional[str]]:
    """A permutation of `structures` within each step count (seeded), such that no problem keeps its
    own structure where its step-count class has another member; problems without one keep None."""
    classes: Dict[int, List[int]] = defaultdict(list)
    for i, text in enumerate(structures):
        if text:
            classes[len(parse_structure(text).steps)].append(i)
    out = list(structures)
    rng = random.Random(f"rlkd-structure-control/{seed}")
    for members in classes.values():
        if len(members) < 2:
            continue
        order = members[:]
        rng.shuffle(order)
        # a rotation of a random order is a derangement of the members: nobody keeps their own
        for src, dst in zip(order, order[1:] + order[:1]):
            out[dst] = structures[src]
    return out
