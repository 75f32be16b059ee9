"""The GSRM decomposition prompt: an instruction and two worked examples per domain.

Message layout of `build_decompose_messages`: a system message with the instruction, then each
few-shot as a prior turn pair (user: problem + reasoning path, assistant: its decomposition in the
exact tag format), then the user turn to decompose. The few-shot turns use the same user template
as the real request, and their assistant turns are rendered by `format_structure`, the same
function that renders GSRM training targets (train on `build_decompose_messages(..., n_examples=0)`
followed by an assistant turn `format_structure(target)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from .parser import FIELDS, FINAL_ANSWER_PREFIX, Step, Structure, tag

DOMAINS = ("math", "code", "science", "puzzle")

INSTRUCTION = f"""You rewrite a reasoning path into its structure: a numbered sequence of steps, \
each a line of meta-reasoning followed by the sub-problem it chooses and that sub-problem's result.

Write every step as exactly three lines, numbering steps 1, 2, 3, ... in order:
{tag("meta", "i")} <meta-reasoning: what to do next and why, without stating the result>
{tag("query", "i")} <the one sub-problem this step solves, stated on its own>
{tag("answer", "i")} <the short result of that sub-problem>

After the last step write one line:
{FINAL_ANSWER_PREFIX} <the final answer of the reasoning path>

Keep the steps of the reasoning path in its order, including checks and corrections that change \
its course; leave out repetitions and filler. Do not solve the problem yourself and do not fix \
mistakes: describe what the reasoning path does. Write nothing besides the steps and the final \
answer line."""


@dataclass(frozen=True)
class Example:
    """A worked example: a raw reasoning path and its decomposition."""

    problem: str
    reasoning: str
    structure: Structure


def _example(problem: str, reasoning: str, steps: Sequence[Tuple[str, str, str]], final: str) -> Example:
    return Example(problem, reasoning, Structure([Step(*s) for s in steps], final, []))


FEW_SHOTS: Dict[str, Tuple[Example, Example]] = {
    "math": (
        _example(
            "A rectangle has a perimeter of 30 and its length is twice its width. What is its area?",
            "Okay, the perimeter is 30 and the length is twice the width. Let me call the width w, so "
            "the length is 2w. The perimeter is 2(l + w) = 2(2w + w) = 6w, so 6w = 30 and w = 5. Then "
            "the length is 10. The area is length times width, 10 * 5 = 50. Let me double check with "
            "the perimeter: 2(10 + 5) = 30. Yes. So the area is 50.",
            [
                (
                    "The area needs both sides, and the perimeter ties them together through the width, "
                    "so write the perimeter in terms of the width and solve for it.",
                    "If the length is twice the width w and the perimeter is 30, what is w?",
                    "w = 5",
                ),
                (
                    "With the width known, the length follows from the given ratio.",
                    "What is the length if it is twice a width of 5?",
                    "10",
                ),
                (
                    "Both sides are known now, so multiply them to get the area.",
                    "What is the area of a 10 by 5 rectangle?",
                    "50",
                ),
                (
                    "Check the sides against the given perimeter before answering.",
                    "Is the perimeter of a 10 by 5 rectangle equal to 30?",
                    "Yes, 2(10 + 5) = 30",
                ),
            ],
            "50",
        ),
        _example(
            "What is the remainder when 2^100 is divided by 7?",
            "Computing 2^100 directly is hopeless, so look at powers of 2 mod 7: 2^1 = 2, 2^2 = 4, "
            "2^3 = 8 = 1 mod 7. So the powers repeat with period 3. Now 100 = 3 * 33 + 1, so 100 mod 3 "
            "is 1, and 2^100 has the same remainder as 2^1, which is 2. The remainder is 2.",
            [
                (
                    "The power is too large to compute, but powers modulo 7 must repeat, so look for "
                    "their cycle first.",
                    "What are 2^1, 2^2 and 2^3 modulo 7?",
                    "2, 4, 1, so the cycle has length 3",
                ),
                (
                    "With a cycle of length 3 only the exponent modulo 3 matters, so reduce 100.",
                    "What is 100 modulo 3?",
                    "1",
                ),
                (
                    "The reduced exponent picks the position in the cycle.",
                    "What is 2^1 modulo 7?",
                    "2",
                ),
            ],
            "2",
        ),
    ),
    "code": (
        _example(
            "Write a Python function fib(n) that returns the n-th Fibonacci number (F(0) = 0, "
            "F(1) = 1) in O(n) time.",
            "Plain recursion fib(n-1) + fib(n-2) would be exponential, so I should iterate. Keep two "
            "variables a, b = 0, 1 and do a, b = b, a + b, n times; then a is F(n). Let me check "
            "n = 0: the loop doesn't run, returns 0. n = 1: one iteration gives a = 1. n = 5: 0, 1, 1, "
            "2, 3, 5, so 5. Good.",
            [
                (
                    "Plain recursion repeats work, so first choose an approach that meets the O(n) bound.",
                    "How can F(n) be computed in O(n) time?",
                    "Iterate, keeping only the last two values",
                ),
                (
                    "Turn the iteration into code with the right initial values and update.",
                    "Which loop computes F(n) starting from a, b = 0, 1?",
                    "for _ in range(n): a, b = b, a + b; then return a",
                ),
                (
                    "Off-by-one errors show at small inputs, so test the edge cases.",
                    "What does the function return for n = 0, 1 and 5?",
                    "0, 1 and 5, as expected",
                ),
            ],
            "Iterate a, b = b, a + b n times from a, b = 0, 1 and return a",
        ),
        _example(
            "This function should return the index of the last occurrence of t in xs, or -1. Find "
            "the bug and fix it.\n"
            "def last_index(xs, t):\n    for i in range(len(xs)):\n        if xs[i] == t:\n"
            "            return i\n    return -1",
            "Let me try it on [1, 2, 1] with t = 1. i = 0 matches and it returns 0 right away, but the "
            "last occurrence is at 2. So it returns the first match. I could loop backwards instead, "
            "range(len(xs) - 1, -1, -1); then the first match is the last occurrence. Check [1, 2, 1], "
            "t = 1: i = 2 matches, returns 2. And t = 3 on [1, 2] returns -1. Fixed.",
            [
                (
                    "Run the function on an input where the target occurs twice, to see which "
                    "occurrence it finds.",
                    "What does last_index([1, 2, 1], 1) return?",
                    "0, while the last occurrence is at 2",
                ),
                (
                    "The loop returns at the first match from the left, so change the direction of "
                    "the scan.",
                    "Which loop makes the first match the last occurrence?",
                    "for i in range(len(xs) - 1, -1, -1)",
                ),
                (
                    "Confirm the fix on the failing input and on a target that is absent.",
                    "What does the fixed function return for ([1, 2, 1], 1) and ([1, 2], 3)?",
                    "2 and -1",
                ),
            ],
            "Scan from the end: for i in range(len(xs) - 1, -1, -1)",
        ),
    ),
    "science": (
        _example(
            "A 2 kg ball is dropped from a height of 20 m. Ignoring air resistance and taking "
            "g = 10 m/s^2, how fast is it moving just before it hits the ground?",
            "No air resistance, so energy is conserved: mgh = 1/2 m v^2. The mass cancels, "
            "v = sqrt(2gh) = sqrt(2 * 10 * 20) = sqrt(400) = 20 m/s. Let me cross-check with "
            "kinematics: v^2 = 2gh = 400, v = 20. Same. So 20 m/s.",
            [
                (
                    "Without air resistance mechanical energy is conserved, so equate the potential "
                    "energy lost with the kinetic energy gained.",
                    "What is v if mgh = 1/2 m v^2?",
                    "v = sqrt(2gh); the mass cancels",
                ),
                (
                    "Substitute the given values into the formula.",
                    "What is sqrt(2 * 10 * 20)?",
                    "20 m/s",
                ),
                (
                    "Cross-check with an independent method, the kinematics of free fall.",
                    "What speed does v^2 = 2gh give for g = 10 m/s^2 and h = 20 m?",
                    "20 m/s, the same",
                ),
            ],
            "20 m/s",
        ),
        _example(
            "How many grams of water form when 4 g of hydrogen gas burn completely in excess oxygen?",
            "Hydrogen burns as 2 H2 + O2 -> 2 H2O. H2 is 2 g/mol, so 4 g is 2 mol. The equation "
            "gives one H2O per H2, so 2 mol of water. Water is 18 g/mol, so 2 * 18 = 36 g.",
            [
                (
                    "Amounts in a reaction are related through the balanced equation, so write it first.",
                    "What is the balanced equation for burning hydrogen?",
                    "2 H2 + O2 -> 2 H2O",
                ),
                (
                    "The equation counts moles, so convert the mass of hydrogen to moles.",
                    "How many moles are 4 g of H2 at 2 g/mol?",
                    "2 mol",
                ),
                (
                    "Use the mole ratio of the equation to get the moles of water.",
                    "How many moles of H2O do 2 mol of H2 give?",
                    "2 mol, as the ratio is 1:1",
                ),
                (
                    "The question asks for a mass, so convert the moles of water back to grams.",
                    "What is the mass of 2 mol of H2O at 18 g/mol?",
                    "36 g",
                ),
            ],
            "36 g",
        ),
    ),
    "puzzle": (
        _example(
            "Alice, Bob and Carol each own one pet: a cat, a dog or a fish. Alice does not own the dog. "
            "Bob owns the fish. Who owns the cat?",
            "Bob has the fish, so Alice and Carol share the cat and the dog. Alice doesn't own the "
            "dog, so Alice has the cat, and Carol gets the dog. Everyone has exactly one pet. Alice "
            "owns the cat.",
            [
                (
                    "Start from the clue that fixes a pet outright, since it removes an option for "
                    "everyone else.",
                    "Which pet does Bob own?",
                    "The fish",
                ),
                (
                    "With the fish taken, Alice has two options left; apply the clue about Alice.",
                    "Which pet does Alice own if she has the cat or the dog but not the dog?",
                    "The cat",
                ),
                (
                    "Give the remaining pet to the last person to check that the assignment is "
                    "consistent.",
                    "Which pet is left for Carol?",
                    "The dog",
                ),
            ],
            "Alice",
        ),
        _example(
            "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much "
            "does the ball cost?",
            "My first thought is 10 cents. But then the bat is $1.10 and the total is $1.20, which is "
            "wrong. Let the ball be x, the bat x + 1.00, so 2x + 1.00 = 1.10 and x = 0.05. Check: "
            "0.05 + 1.05 = 1.10. The ball costs 5 cents.",
            [
                (
                    "Test the intuitive answer against both conditions before trusting it.",
                    "If the ball costs $0.10, what is the total?",
                    "$1.20, so $0.10 is wrong",
                ),
                (
                    "The guess failed, so set up an equation from the two conditions instead.",
                    "What x solves x + (x + 1.00) = 1.10?",
                    "x = 0.05",
                ),
                (
                    "Verify the new value against the total before answering.",
                    "Do $0.05 and $1.05 add up to $1.10?",
                    "Yes",
                ),
            ],
            "$0.05",
        ),
    ),
}


def format_structure(structure: Structure) -> str:
    """Render a Structure in the exact tag format (the inverse of `parse_structure`)."""
    lines = []
    for i, step in enumerate(structure.steps, start=1):
        for name in FIELDS:
            lines.append(f"{tag(name, i)} {getattr(step, name)}".rstrip(" "))
    if structure.final_answer is not None:
        lines.append(f"{FINAL_ANSWER_PREFIX} {structure.final_answer}".rstrip(" "))
    return "\n".join(lines)


def _task(problem: str, reasoning: str) -> str:
    return f"Problem:\n{problem}\n\nReasoning path:\n{reasoning}\n\nDecompose this reasoning path."


def build_decompose_messages(
    problem: str, reasoning: str, domain: str = "math", n_examples: int = 2
) -> List[Dict[str, str]]:
    """System instruction, `n_examples` few-shot turn pairs of `domain`, then the user turn."""
    if domain not in FEW_SHOTS:
        raise ValueError(f"unknown decomposition domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    examples = FEW_SHOTS[domain]
    if not 0 <= n_examples <= len(examples):
        raise ValueError(f"n_examples must be between 0 and {len(examples)}, got {n_examples}")
    messages = [{"role": "system", "content": INSTRUCTION}]
    for ex in examples[:n_examples]:
        messages.append({"role": "user", "content": _task(ex.problem, ex.reasoning)})
        messages.append({"role": "assistant", "content": format_structure(ex.structure)})
    messages.append({"role": "user", "content": _task(problem, reasoning)})
    return messages
