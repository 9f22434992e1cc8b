"""Choosing ONNX Runtime execution providers: CUDA when it is actually usable, otherwise CPU.

onnxruntime-gpu lists CUDAExecutionProvider even on machines without CUDA libraries or a GPU; asking for it
there makes ONNX Runtime log a stack of errors and fall back. bnfold asks once, with ONNX Runtime's logging
silenced, checks which provider the session really got, and states the outcome once.

On CUDA the provider gets bnfold's options (:class:`CudaOptions`): the device, cuDNN's convolution algorithm
search, the memory arena's growth and a memory limit. CUDA options set explicitly on a machine where CUDA is
not usable, or together with the CPU provider, are refused with one message: the server does not start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.sessions import CPU, CUDA, Provider, probe_cuda
from contracts.sessions import session_options as contract_options

logger = logging.getLogger(__name__)

_resolved: dict[tuple[str, CudaOptions | None], list[Provider]] = {}


class ProviderError(RuntimeError):
    """The provider settings cannot be honoured on this machine; the server must not start."""


@dataclass(frozen=True)
class CudaOptions:
    """CUDA provider options. ``explicit`` names the options the user set (refused where CUDA is unusable).

    Defaults: device 0; EXHAUSTIVE algorithm search (its cost is paid once per batch shape, at warm-up when
    batch buckets are on); an arena that grows by what is requested rather than to the next power of two;
    no memory limit (0).
    """

    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    arena_extend_strategy: str = "kSameAsRequested"
    gpu_mem_limit: int = 0
    explicit: tuple[str, ...] = ()

    def to_ort(self) -> dict[str, str]:
        """The provider options as ONNX Runtime takes them (strings; no limit means the option is left out)."""
        options = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
            "arena_extend_strategy": self.arena_extend_strategy,
        }
        if self.gpu_mem_limit:
            options["gpu_mem_limit"] = str(self.gpu_mem_limit)
        return options


def cuda_options(settings: Any) -> CudaOptions:
    """:class:`CudaOptions` from the ``cuda_*`` fields of :class:`service.settings.Settings` (None: default)."""
    given = {
        name: getattr(settings, f"cuda_{name}")
        for name in ("device_id", "cudnn_conv_algo_search", "arena_extend_strategy", "gpu_mem_limit")
        if getattr(settings, f"cuda_{name}", None) is not None
    }
    return CudaOptions(**given, explicit=tuple(sorted(given)))


def cuda_usable(model_path: Path) -> bool:
    """Whether ONNX Runtime really runs ``model_path`` on CUDA here, not just lists the provider
    (:func:`contracts.sessions.probe_cuda`)."""
    return probe_cuda(model_path) is not None


def _refuse_unusable(setting: str, cuda: CudaOptions | None) -> None:
    if setting == "cuda":
        raise ProviderError(
            "BNFOLD_PROVIDERS=cuda but CUDA is not usable here (no GPU, or CUDA/cuDNN libraries missing); "
            "use auto or cpu"
        )
    if cuda is not None and cuda.explicit:
        names = ", ".join(f"BNFOLD_CUDA_{n.upper()}" for n in cuda.explicit)
        raise ProviderError(
            f"{names} set, but CUDA is not usable on this machine (no GPU, or CUDA/cuDNN libraries missing); "
            "unset them to serve on the CPU"
        )


def resolve_providers(setting: str, model_path: Path, cuda: CudaOptions | None = None) -> list[Provider]:
    """Providers to use for every session: decided once per process from ``setting`` (auto, cpu, cuda).

    On CUDA the entry carries ``cuda``'s options (defaults when None).
    """
    key = (setting, cuda)
    if key in _resolved:
        return _resolved[key]
    chosen: list[Provider]
    if setting == "cpu":
        if cuda is not None and cuda.explicit:
            raise ProviderError(f"CUDA options {', '.join(cuda.explicit)} set together with BNFOLD_PROVIDERS=cpu")
        chosen = [CPU]
        logger.info("execution provider: CPU (configured)")
    elif cuda_usable(model_path):
        chosen = [(CUDA, (cuda or CudaOptions()).to_ort()), CPU]
        logger.info("execution provider: CUDA (GPU found and usable), options %s", chosen[0][1])
    else:
        _refuse_unusable(setting, cuda)
        chosen = [CPU]
        logger.info("execution provider: CPU (CUDA is not usable on this machine)")
    _resolved[key] = chosen
    return chosen


def options_in_force(session: Any) -> dict[str, str]:
    """The options ONNX Runtime reports for the provider ``session`` actually runs on (first in its list)."""
    provider = session.get_providers()[0]
    return dict(session.get_provider_options().get(provider, {}))


# BNFOLD_INTRA_OP_SPINNING -> ONNX Runtime session config entries (onnxruntime_session_options_config_keys.h)
SPINNING: dict[str, dict[str, str]] = {
    "run": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
    "always": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "0"},
    "off": {"session.intra_op.allow_spinning": "0"},
}


def session_in_force(session: Any) -> dict[str, str]:
    """The session options bnfold sets, as ONNX Runtime reports them for ``session`` (threads 0: its default)."""
    options = session.get_session_options()
    reported = {"intra_op_num_threads": str(options.intra_op_num_threads)}
    for key in sorted({key for entries in SPINNING.values() for key in entries}):
        try:
            reported[key] = options.get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default applies
            continue
    return reported


def session_options(intra_op_threads: int, spinning: str = "run") -> Any:
    """Serving session options: full graph optimisation, quiet logging, optional thread count, and how the
    intra-op threads wait for work (``spinning``, a key of :data:`SPINNING`).

    ONNX Runtime's own default ("always") keeps its pool threads spinning after a run ends; in a server that
    burns a core between batches, the core the event loop needs to decode the next requests. "run" lets them
    spin while a run lasts (its operators hand work to each other quickly) and sleep once it ends.
    """
    return contract_options("enable_all", intra_op_threads=intra_op_threads, config_entries=SPINNING[spinning])
