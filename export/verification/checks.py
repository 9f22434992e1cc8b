"""Numerical verification of an export, judged against a float64 oracle so float32's own rounding never fails it.

Every export runs every check; a breach fails the export and nothing is written.

The oracle is the ORIGINAL model run in float64 (``y64``). float32 arithmetic is never exact, so the question
is not "is the folded model equal to the original?" but "is it as close to the truth as the original is?":

    d_orig = max_i |y32_orig[i] - y64[i]|     the float32 original's own distance from the oracle
    d_new  = max_i |y_new[i]    - y64[i]|     the candidate's distance (folded torch module, ONNX Runtime, ...)
    scale  = max_i |y64[i]|                   the output scale

    pass  iff  d_new <= FACTOR * d_orig + FLOOR * scale        FACTOR = 2, FLOOR = 2**-20 (about 9.5e-7)

The maximum absolute error over every output element decides; the mean, median and 99th percentile are
reported beside it. The factor allows the fold's own single rounding of W' and b' (one float32 rounding of
values the original also rounds); the floor, a few float32 units in the last place of the output scale,
covers a model whose float32 run happens to be almost exact. A wrong fold moves outputs by far more: a
dropped channel scale, eps left out with small variances, a shift pushed through zero padding or a
transposed ConvTranspose layout each give distances orders of magnitude above the bound.

Real and random inputs are checked as separate groups, so large random outputs cannot hide a breach on
the real ones.

Checks:
1. folded torch module vs the oracle;
2. ONNX Runtime, CPU provider, ORT_DISABLE_ALL (its fusions cannot hide a bad fold) vs the oracle;
3. ONNX Runtime at ORT_ENABLE_ALL, what ``bnfold-serve`` runs, vs the oracle (and on the CUDA provider
   when it is usable);
4. batch invariance: each sample alone and inside a batch of 8 give the same output within
   ``FLOOR * scale`` (the serving answer must not depend on the rest of the batch);
5. with a validation split, top-1 agreement with the float32 original: every disagreement must be a near
   tie in the oracle (its two classes within ``FACTOR * d_orig + FLOOR * scale`` of each other).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contracts.sessions import open_session, probe_cuda
from export.verification.feeds import feed, joined

FACTOR = 2.0
FLOOR = 2.0**-20
DECIDING_STATISTIC = "max abs error vs the float64 oracle"

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """The rule's constants. ``min_agreement`` None: every top-1 disagreement must be a near tie."""

    name: str = "float32"
    factor: float = FACTOR
    floor: float = FLOOR
    min_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rule": "err <= factor * float32_original_err + floor * output_scale"}


FLOAT32 = Tolerance()
# fp16 keeps 11 significant bits: a floor of 2**-7 of the output scale, and top-1 agreement on at least 99.5%.
FLOAT16 = Tolerance("float16", FACTOR, 2.0**-7, 0.995)


@dataclass
class ErrorStats:
    """Distribution of |candidate - oracle| over every output element."""

    max: float
    mean: float
    median: float
    p99: float

    @classmethod
    def of(cls, new: np.ndarray, oracle: np.ndarray) -> ErrorStats:
        diff = np.abs(new.astype(np.float64) - oracle)
        if not np.all(np.isfinite(diff)):
            return cls(float("inf"), float("inf"), float("inf"), float("inf"))
        if diff.size == 0:
            return cls(0.0, 0.0, 0.0, 0.0)
        return cls(float(diff.max()), float(diff.mean()), float(np.median(diff)), float(np.quantile(diff, 0.99)))


@dataclass
class Check:
    """One verification check: the figures that decided it, and the rule it was held to."""

    name: str
    passed: bool
    samples: int
    detail: str = ""
    candidate: ErrorStats | None = None  # the candidate's distance from the oracle
    original: ErrorStats | None = None  # the float32 original's distance from the oracle
    bound: float = 0.0
    decided_by: str = DECIDING_STATISTIC
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the check, its candidate's runs included

    @property
    def ratio(self) -> float:
        """Candidate's max distance over the original's (1.0 = exactly as accurate as float32 allows)."""
        if self.candidate is None or self.original is None:
            return 0.0
        return self.candidate.max / self.original.max if self.original.max > 0 else float(self.candidate.max > 0)

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        if self.candidate is None or self.original is None:
            return f"{verdict} {self.name:<38} samples {self.samples:>5}  {self.detail}".rstrip()
        return (
            f"{verdict} {self.name:<38} samples {self.samples:>5}  err {self.candidate.max:.2e}  "
            f"float32 original {self.original.max:.2e}  ratio {self.ratio:.2f}  bound {self.bound:.2e}  "
            f"{self.seconds:.1f} s"
        ).rstrip()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class Reference:
    """One group of inputs with the oracle's and the float32 original's outputs on them."""

    group: str
    x: np.ndarray
    oracle: np.ndarray  # float64
    original: np.ndarray  # float32 original
    outputs: tuple[tuple[str, slice], ...] = ()  # several outputs joined: each one's name and columns

    def part(self, columns: slice) -> Reference:
        """The reference restricted to one output's columns (several outputs joined per sample)."""
        return Reference(self.group, self.x, self.oracle[:, columns], self.original[:, columns])

    @property
    def original_error(self) -> ErrorStats:
        return ErrorStats.of(self.original, self.oracle)

    @property
    def scale(self) -> float:
        return float(np.abs(self.oracle).max(initial=0.0))

    def bound(self, tol: Tolerance = FLOAT32) -> float:
        return tol.factor * self.original_error.max + tol.floor * self.scale


def against_oracle(name: str, candidate: np.ndarray, ref: Reference, tol: Tolerance = FLOAT32) -> Check:
    """Check ``candidate`` (outputs on ``ref.x``) by the rule of the module docstring. With several outputs
    each is held to its own bound (its own float32 error and scale) and the check reports the worst one."""
    if len(ref.outputs) > 1:
        checks = [(out, against_oracle(name, candidate[:, cols], ref.part(cols), tol)) for out, cols in ref.outputs]
        out, worst = max(checks, key=lambda c: (not c[1].passed, c[1].candidate.max / max(c[1].bound, 1e-300)))  # type: ignore[union-attr]
        worst.detail = f"{ref.group} inputs; output {out!r}, the worst of {len(checks)} outputs"
        return worst
    got = ErrorStats.of(candidate, ref.oracle)
    bound = ref.bound(tol)
    passed = bool(got.max <= bound)
    return Check(f"{name} ({ref.group})", passed, len(ref.x), f"{ref.group} inputs", got, ref.original_error, bound)


def check_runner(name: str, run: Runner, ref: Reference, tol: Tolerance = FLOAT32) -> Check:
    """Run ``run`` on ``ref``'s inputs and judge it against the oracle; the check records its time."""
    start = time.perf_counter()
    check = against_oracle(name, run_batched(run, ref.x), ref, tol)
    check.seconds = time.perf_counter() - start
    return check


def timed(make: Callable[[], Check]) -> Check:
    """``make()``, with its wall time recorded on the check."""
    start = time.perf_counter()
    check = make()
    check.seconds = time.perf_counter() - start
    return check


def run_batched(fn: Runner, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Apply ``fn`` to ``x`` in chunks of ``batch`` and concatenate."""
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def batch_invariance(run: Runner, x: np.ndarray, samples: int = 4, floor: float = FLOOR) -> Check:
    """Each of the first ``samples`` inputs run alone vs inside a batch of 8, within ``floor * scale``."""
    batch = np.concatenate([x] * (8 // len(x) + 1))[:8] if len(x) < 8 else x[:8]
    together = run(batch).astype(np.float64)
    tol = floor * float(np.abs(together).max(initial=0.0))
    worst = 0.0
    n = min(samples, len(batch))
    for i in range(n):
        alone = run(batch[i : i + 1])[0].astype(np.float64)
        worst = max(worst, float(np.abs(alone - together[i]).max()))
    return Check(
        "batch invariance", worst <= tol, n, f"alone vs in a batch of 8: max diff {worst:.2e}, tolerance {tol:.2e}"
    )


def top1_agreement(new: np.ndarray, ref: Reference, tol: Tolerance = FLOAT32, columns: slice = slice(None)) -> Check:
    """Top-1 agreement of ``new`` with the float32 original on the validation split.

    With ``tol.min_agreement`` None (float32) every disagreement must be a near tie in the oracle; with a
    share (reduced-precision variants) at least that share must agree. ``columns``: where the logits lie in
    the output (several outputs joined per sample, ``export.verification.feeds``); default all of it.
    """
    required = tol.min_agreement
    logits, oracle = new[:, columns], ref.oracle[:, columns]
    new_top, old_top = logits.argmax(axis=1), ref.original[:, columns].argmax(axis=1)
    differ = np.flatnonzero(new_top != old_top)
    share = 1.0 - len(differ) / len(new_top) if len(new_top) else 1.0
    if required is not None:
        ok = share >= required
        detail = f"{share:.2%} of the validation split agree (required {required:.1%})"
        return Check("top-1 agreement", ok, len(new_top), detail, extra={"agreement": share})
    gaps = np.abs(oracle[differ, new_top[differ]] - oracle[differ, old_top[differ]])
    ties = int((gaps <= ref.bound(tol)).sum())
    detail = f"{share:.2%} of the validation split agree; {len(differ)} differ, {ties} of them near ties in float64"
    return Check("top-1 agreement", ties == len(differ), len(new_top), detail, extra={"agreement": share})


def ort_session(path: Path | bytes, level: str = "disable_all", provider: str = "CPUExecutionProvider") -> Any:
    """An ONNX Runtime session at optimisation ``level`` ("disable_all" or "enable_all") on ``provider``
    (:func:`contracts.sessions.open_session`, the factory serving uses too)."""
    return open_session(path, [provider], level=level)


def cuda_session(path: Path) -> Any | None:
    """An ORT_ENABLE_ALL session on the CUDA provider, or None where CUDA is not usable here (the probe serving
    uses: :func:`contracts.sessions.probe_cuda`)."""
    return probe_cuda(path)


def session_runner(session: Any, inputs: str | Sequence[str], outputs: str | Sequence[str]) -> Runner:
    """``x -> outputs`` for one ONNX Runtime session: a name, or several (``export.verification.feeds``: a
    structured batch of several inputs, several outputs joined per sample)."""
    in_names = [inputs] if isinstance(inputs, str) else list(inputs)
    out_names = [outputs] if isinstance(outputs, str) else list(outputs)
    if len(in_names) == 1 and len(out_names) == 1:  # one input, one output: as before, no packing

        def run_one(x: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(out_names, {in_names[0]: np.ascontiguousarray(x)})[0])

        return run_one

    def run(x: np.ndarray) -> np.ndarray:
        return joined(session.run(out_names, feed(x, in_names)))

    return run


IONames = tuple[str | Sequence[str], str | Sequence[str]]  # (input name(s), output name(s)) of a runner


def onnx_checks(
    path: Path, refs: list[Reference], names: IONames, tol: Tolerance = FLOAT32
) -> tuple[list[Check], Runner]:
    """Checks 2-4 on the ONNX file at ``path``; returns them and the ORT_DISABLE_ALL runner."""
    plain = session_runner(ort_session(path, "disable_all"), *names)
    served = session_runner(ort_session(path, "enable_all"), *names)
    checks = [check_runner("onnxruntime, ORT_DISABLE_ALL", plain, r, tol) for r in refs]
    checks += [check_runner("onnxruntime, ORT_ENABLE_ALL", served, r, tol) for r in refs]
    cuda_session_ = cuda_session(path)
    if cuda_session_ is not None:
        cuda = session_runner(cuda_session_, *names)
        checks += [check_runner("onnxruntime CUDA, ORT_ENABLE_ALL", cuda, r, tol) for r in refs]
    checks.append(timed(lambda: batch_invariance(served, refs[0].x, floor=tol.floor)))
    return checks, plain


def validation_agreement(
    run: Runner, x: np.ndarray, original: Runner, oracle: Runner, tol: Tolerance, columns: slice = slice(None)
) -> Check:
    """Top-1 agreement of ``run`` with the float32 original on a whole validation split (the logits in
    ``columns``, see :func:`top1_agreement`)."""
    ref = Reference("validation", x, run_batched(oracle, x).astype(np.float64), run_batched(original, x))
    return top1_agreement(run_batched(run, x), ref, tol, columns)
