"""Instruction templates for compose: how a kept task becomes one training exchange (a user turn and an answer).

AdaMLLM's release turns each task into an exchange through FLAN-style instruction patterns, and not always forward: a
share of them give the answer and ask for the question, or give the question and the answer and ask for the reasoning.
The paper counts this task diversity as part of the method. The wording below is this project's own; what follows
the release is the set of task KINDS and how often each is drawn.

Two pattern lists, as in the release:
- ``COT_PATTERNS`` (fields ``{question}``, ``{reasoning}`` = the informative answer, ``{answer}`` = the precise answer)
  for the chain-of-thought rule;
- ``BASIC_PATTERNS`` (fields ``{question}``, ``{answer}`` = the informative answer, alone or followed by the precise
  one) for compose's two exceptions.

A pattern's ``weight`` is how many of the release's patterns it stands for: a draw picks a pattern with probability
weight / total, so each kind, and within the forward kind the share that keeps the question verbatim, is drawn as
often as the release draws it. The release's counts (process/read_compre_pt.py; a draw there is uniform over a list):
- `qa_w_cot`, 210 patterns: forward 119 (question verbatim in 92, of which 15 put the answer before the reasoning;
  rewritten in 27), rationale_only 1, rationale_from_answer 23, question_answer_from_rationale 23,
  question_from_rationale_answer 22, question_rationale_from_answer 22: 43% of the draws are not forward;
- `qa`, 79 patterns: forward 64 (question verbatim in 42), question_from_answer 10, question_from_image 5: 19% not
  forward.
"""

from __future__ import annotations

from dataclasses import dataclass

# Who gives what to whom in the exchange ("from" = what the user turn gives).
FORWARD = "forward"  # question -> answer (BASIC) or reasoning + answer (COT)
RATIONALE_ONLY = "rationale_only"  # question -> reasoning
RATIONALE_FROM_ANSWER = "rationale_from_answer"  # question + answer -> reasoning
QUESTION_ANSWER_FROM_RATIONALE = "question_answer_from_rationale"  # reasoning -> question + answer
QUESTION_FROM_RATIONALE_ANSWER = "question_from_rationale_answer"  # reasoning + answer -> question
QUESTION_RATIONALE_FROM_ANSWER = "question_rationale_from_answer"  # answer -> question + reasoning
QUESTION_FROM_ANSWER = "question_from_answer"  # answer -> question
QUESTION_FROM_IMAGE = "question_from_image"  # nothing but the image -> question

VERBATIM_QUESTION = "{question}"


@dataclass(frozen=True)
class Pattern:
    """One exchange template: the user turn, the assistant turn, the kind, and how many release patterns it stands
    for."""

    kind: str
    user: str
    assistant: str
    weight: int


def _forward(user: str, assistants: tuple[str, ...], weight: int) -> tuple[Pattern, ...]:
    return tuple(Pattern(FORWARD, user, assistant, weight) for assistant in assistants)


COT_PATTERNS: tuple[Pattern, ...] = (
    # forward, the question verbatim, reasoning first: 77 of the release's 210
    *_forward(VERBATIM_QUESTION, (
        "{reasoning}\nSo the answer is: {answer}",
        "Let me look closely. {reasoning}\nAnswer: {answer}",
        "Reasoning: {reasoning}\nAnswer: {answer}",
        "{reasoning} Hence, the answer is {answer}",
        "Step by step: {reasoning}\nConclusion: {answer}",
        "{reasoning}\n\nFinal answer: {answer}",
        "Here is what the image shows. {reasoning}\nMy answer: {answer}",
        "{reasoning}\nThat means the answer is {answer}",
        "Explanation: {reasoning}\nTherefore: {answer}",
        "{reasoning}\n=> {answer}",
        "Thinking it through: {reasoning}\nThe answer: {answer}",
    ), weight=7),
    # forward, the question verbatim, answer first: 15
    *_forward(VERBATIM_QUESTION, (
        "{answer}\nExplanation: {reasoning}",
        "Answer: {answer}\nReasoning: {reasoning}",
        "The answer is {answer}\nWhy: {reasoning}",
    ), weight=5),
    # forward, the question rewritten: 27
    Pattern(FORWARD, "Answer the following question about the image. {question}",
            "{reasoning}\nSo the answer is: {answer}", 3),
    Pattern(FORWARD, "{question}\nThink step by step before you answer.", "Step by step: {reasoning}\nAnswer: {answer}",
            3),
    Pattern(FORWARD, "Question: {question}\nGive your reasoning first, then the answer.",
            "Reasoning: {reasoning}\nAnswer: {answer}", 3),
    Pattern(FORWARD, "Look at the image and answer: {question}", "{reasoning}\nThe answer: {answer}", 3),
    Pattern(FORWARD, "{question} Explain your answer.", "{reasoning}\nAnswer: {answer}", 3),
    Pattern(FORWARD, "Q: {question}\nA:", "{reasoning} So the answer is {answer}", 3),
    Pattern(FORWARD, "Please answer with a short explanation: {question}", "{reasoning}\nIn short: {answer}", 3),
    Pattern(FORWARD, "Based on the picture: {question}", "From the picture: {reasoning}\nAnswer: {answer}", 3),
    Pattern(FORWARD, "{question}\nReason about what you see, then give the answer.",
            "What I see: {reasoning}\nSo: {answer}", 3),
    # the reasoning alone: 1
    Pattern(RATIONALE_ONLY, VERBATIM_QUESTION, "Explanation: {reasoning}", 1),
    # the question and the answer given, the reasoning asked: 23
    Pattern(RATIONALE_FROM_ANSWER, "Question: {question}\nAnswer: {answer}\nExplain how the image supports this "
            "answer.", "{reasoning}", 6),
    Pattern(RATIONALE_FROM_ANSWER, "{question}\nThe answer is: {answer}\nWhy is that?", "{reasoning}", 6),
    Pattern(RATIONALE_FROM_ANSWER, "Q: {question}\nA: {answer}\nWhat reasoning leads to A?", "Reasoning: {reasoning}",
            6),
    Pattern(RATIONALE_FROM_ANSWER, "Here is a question about the image and its answer.\nQuestion: {question}\n"
            "Answer: {answer}\nJustify the answer.", "{reasoning}", 5),
    # the reasoning given, the question and the answer asked: 23
    Pattern(QUESTION_ANSWER_FROM_RATIONALE, "{reasoning}", "Question: {question}\nAnswer: {answer}", 15),
    Pattern(QUESTION_ANSWER_FROM_RATIONALE, "Here is a reasoning about the image: {reasoning}\nWhat question does it "
            "answer, and what is the answer?", "Question: {question}\nAnswer: {answer}", 4),
    Pattern(QUESTION_ANSWER_FROM_RATIONALE, "Reasoning: {reasoning}\nWrite the question and the answer this reasoning "
            "leads to.", "Q: {question}\nA: {answer}", 4),
    # the reasoning and the answer given, the question asked: 22
    Pattern(QUESTION_FROM_RATIONALE_ANSWER, "{reasoning}\nAnswer: {answer}\nWhich question is this the answer to?",
            "{question}", 8),
    Pattern(QUESTION_FROM_RATIONALE_ANSWER, "Reasoning: {reasoning}\nAnswer: {answer}", "Question: {question}", 7),
    Pattern(QUESTION_FROM_RATIONALE_ANSWER, "Write the question that this reasoning and answer respond to.\n"
            "Reasoning: {reasoning}\nAnswer: {answer}", "{question}", 7),
    # the answer given, the question and the reasoning asked: 22
    Pattern(QUESTION_RATIONALE_FROM_ANSWER, "{answer}", "Question: {question}\nReasoning: {reasoning}", 10),
    Pattern(QUESTION_RATIONALE_FROM_ANSWER, "Make up a question about the image that has the answer \"{answer}\", then "
            "explain why.", "Question: {question}\nWhy: {reasoning}", 6),
    Pattern(QUESTION_RATIONALE_FROM_ANSWER, "The answer is: {answer}\nWhat might the question be, and what is the "
            "reasoning?", "The question might be: {question}\n{reasoning}", 6),
)

BASIC_PATTERNS: tuple[Pattern, ...] = (
    # forward, the question verbatim: 42 of the release's 79
    Pattern(FORWARD, VERBATIM_QUESTION, "{answer}", 40),
    Pattern(FORWARD, VERBATIM_QUESTION, "Answer: {answer}", 2),
    # forward, the question rewritten: 22
    Pattern(FORWARD, "Answer this question about the image: {question}", "{answer}", 4),
    Pattern(FORWARD, "Question: {question}\nAnswer:", "{answer}", 4),
    Pattern(FORWARD, "Q: {question}\nA:", "{answer}", 4),
    Pattern(FORWARD, "{question}\nRespond based on the image.", "{answer}", 4),
    Pattern(FORWARD, "Look at the image. {question}", "{answer}", 3),
    Pattern(FORWARD, "Please answer: {question}", "{answer}", 3),
    # the answer given, the question asked: 10
    Pattern(QUESTION_FROM_ANSWER, "{answer}\nWhat question about the image does this answer?", "{question}", 4),
    Pattern(QUESTION_FROM_ANSWER, "Answer: {answer}\nWrite the question.", "{question}", 4),
    Pattern(QUESTION_FROM_ANSWER, "{answer}", "{question}", 2),
    # nothing but the image given, a question asked: 5
    Pattern(QUESTION_FROM_IMAGE, "Ask a question about this image.", "{question}", 3),
    Pattern(QUESTION_FROM_IMAGE, "Write a question someone might ask about the picture.", "{question}", 2),
)
