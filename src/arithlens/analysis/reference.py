"""The reference questions that mean and resample ablations take their replacement values from.

The mean of an activation over a narrow question set (every question a
depth-3 cascade, say) already encodes what those questions share, so
mean-ablating a node with it on that same set can leave the answers intact or
even improve them: on the bundled add_d5_l1, mean-ablating P13L0H1 with the
cascade_depth_3 set's own mean raised its A3 accuracy to 100%, where a random
reference costs A3 points. So the default reference is a separate, fixed set
of `REFERENCE_COUNT` uniformly random questions (its own seed,
`REFERENCE_SEED`), whatever set is tested. Another reference may be passed; if
its questions are not uniformly random (a named question set other than
"random", or a batch whose digit-pair sums fail `is_uniformly_random`) a
`NarrowReferenceWarning` says so. Every ablation table records a description
of the reference it used.
"""

from __future__ import annotations

import warnings

import torch
from transformer_lens.model_bridge import TransformerBridge

from arithlens.analysis.accuracy import check_batch
from arithlens.analysis.question_sets import QuestionSet, make_question_set
from arithlens.model import model_config_of
from arithlens.task import AdditionBatch, make_task

REFERENCE_COUNT = 1000  # a mean over 1,000 questions is within ~3% of an activation's spread of the true mean
REFERENCE_SEED = 1
UNIFORMITY_P_VALUE = 1e-4  # warn only when a batch this lopsided would come from uniform questions 1 time in 10^4
NO_REFERENCE = "none: zeros"
# Chance that a uniformly random digit pair sums to <= 8, to 9, to >= 10 (45, 10 and 45 of the 100 pairs).
_TRI_STATE_SHARES = (0.45, 0.10, 0.45)

Reference = AdditionBatch | QuestionSet | None


class NarrowReferenceWarning(UserWarning):
    """An ablation's reference questions are not uniformly random, so its mean or samples carry their case."""


def default_reference(n_digits: int, op: str = "add") -> QuestionSet:
    """The default ablation reference: `REFERENCE_COUNT` uniformly random questions drawn with `REFERENCE_SEED`
    (of both operations, for a mixed model: the means are over what the model is asked)."""
    question_set = make_question_set(make_task(op, n_digits), "random", REFERENCE_COUNT, REFERENCE_SEED)
    question_set.description = f"{REFERENCE_COUNT:,} uniformly random questions (seed {REFERENCE_SEED})"
    return question_set


def is_uniformly_random(batch: AdditionBatch, *, p_value: float = UNIFORMITY_P_VALUE) -> bool:
    """Whether `batch`'s digit pairs look like those of uniformly random questions.

    Each column's operand digit sum x_d + y_d (read from the tokens, whatever the operation)
    is sorted by what it does to an addition's carry: <= 8 stops one, 9 passes one on, >= 10
    makes one. Every named addition set skews these shares in some column, and the subtraction
    sets skew them through x_d == y_d columns and forced orderings, so a chi-square test of the
    counts per column against the uniform shares (2 degrees of freedom per column) rejects them;
    the batch passes unless the test's p-value is below `p_value`.
    """
    n = batch.n_digits
    tokens = batch.tokens.cpu()
    sums = tokens[:, :n] + tokens[:, n + 1 : 2 * n + 1]  # [batch, n] x_d + y_d (most significant first)
    counts = torch.stack([(sums <= 8).sum(0), (sums == 9).sum(0), (sums >= 10).sum(0)]).double()  # [3, n]
    expected = torch.tensor(_TRI_STATE_SHARES, dtype=torch.float64)[:, None] * len(batch)
    statistic = ((counts - expected) ** 2 / expected).sum()
    freedom = torch.tensor(float(sums.shape[1]), dtype=torch.float64)  # 2 per column, halved for gammaincc
    return bool(torch.special.gammaincc(freedom, statistic / 2) >= p_value)  # the chi-square survival function


def resolve_reference(model: TransformerBridge, batch: AdditionBatch, reference: Reference,
                      method: str) -> tuple[AdditionBatch, str]:
    """The reference batch for `method` and the description every ablation table records.

    Zero ablation reads no reference. A narrow reference is used as given,
    with a `NarrowReferenceWarning` (raised from the caller's caller, the
    public ablation function).
    """
    if method == "zero":
        return batch, NO_REFERENCE
    if reference is None:
        config = model_config_of(model)
        question_set = default_reference(config.n_digits, config.op)
        check_batch(model, question_set.batch)
        return question_set.batch, question_set.description
    if isinstance(reference, QuestionSet):
        check_batch(model, reference.batch)
        if reference.name == "random":
            return reference.batch, f"{len(reference):,} {reference.description} (question set 'random')"
        description = f"{len(reference):,} questions of set {reference.name!r} ({reference.description})"
        _warn(description, "a named question set other than 'random'")
        return reference.batch, description
    check_batch(model, reference)
    description = (f"the {len(reference):,} tested questions themselves" if reference is batch
                   else f"{len(reference):,} given questions")
    if not is_uniformly_random(reference):
        description += " (not uniformly random)"
        _warn(description, "its digit-pair sums are not those of uniformly random questions")
    return reference, description


def _warn(description: str, why: str) -> None:
    warnings.warn(
        f"the ablation reference, {description}, is not uniformly random ({why}): its mean or samples carry "
        f"what its questions share, which can make an ablation look harmless or even helpful; leave reference=None "
        f"for {REFERENCE_COUNT:,} uniformly random questions",
        NarrowReferenceWarning, stacklevel=4)
