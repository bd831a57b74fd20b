"""Prompt formatting (chat templates) and batched generation for the generator."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .settings import (  # noqa: F401 (re-exported)
    DEFAULT_SYSTEM_PROMPT,
    DEFAULTS,
    QUOTED_ANSWER_PREFIX,
    RAGSettings,
    answer_stop,
)
from .utils import stable_seed


def truncate_passage(text: str, tokenizer, max_tokens: int | None) -> str:
    """Cut a passage to at most ``max_tokens`` tokens of ``tokenizer`` (None: keep it whole)."""
    if max_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def format_context(passages: Sequence[str]) -> str:
    return "\n\n".join(f"Passage {i}: {p}" for i, p in enumerate(passages, 1))


def build_messages(question: str, passages: Sequence[str], system_prompt: str | None = DEFAULTS.system_prompt):
    """Conversational prompt (TRL's format): optional system message + a user message with passages and question."""
    user = f"{format_context(passages)}\n\nQuestion: {question}" if passages else f"Question: {question}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user}]


def has_chat_template(tokenizer) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def build_prompt(
    tokenizer,
    question: str,
    passages: Sequence[str],
    max_passage_tokens: int | None = DEFAULTS.max_passage_tokens,
    system_prompt: str | None = DEFAULTS.system_prompt,
    answer_prefix: str | None = DEFAULTS.answer_prefix,
) -> str:
    """The prompt string the generator reads: its chat template when it has one, else a plain text prompt. The
    defaults are :data:`trl_bporag.settings.DEFAULTS`' (:meth:`RAGSettings.prompt
    <trl_bporag.settings.RAGSettings.prompt>` passes a settings object's).

    Passages (never the question) are truncated to ``max_passage_tokens`` tokens each. ``answer_prefix``: text the
    reply starts with (e.g. :data:`QUOTED_ANSWER_PREFIX`), appended after the generation prompt; the generator
    continues it and :func:`clean_answer` with ``stop=answer_stop(answer_prefix)`` keeps what it wrote up to the stop.
    """
    passages = [truncate_passage(p, tokenizer, max_passage_tokens) for p in passages]
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(
            build_messages(question, passages, system_prompt), tokenize=False, add_generation_prompt=True
        )
    else:
        head = f"{system_prompt}\n\n" if system_prompt else ""
        ctx = f"{format_context(passages)}\n\n" if passages else ""
        text = f"{head}{ctx}Question: {question}\nAnswer:" + (" " if answer_prefix else "")
    return text + (answer_prefix or "")


def rag_prompt(tokenizer, settings: RAGSettings, question: str, passages: Sequence[str]) -> str:
    """The prompt the generator reads for ``question`` and its first-k ``passages`` under ``settings``
    (:func:`build_prompt` with the settings' passage budget, system prompt and answer prefix)."""
    return build_prompt(tokenizer, question, list(passages)[: settings.k], settings.max_passage_tokens,
                        settings.system_prompt, settings.answer_prefix)


def clean_answer(text: str, stop: str | None = None) -> str:
    """The answer in a completion: the text before ``stop`` (when given and present), then its first non-empty line,
    stripped."""
    if stop:
        text = text.split(stop, 1)[0]
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@contextlib.contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def _mix_seed(*parts) -> int:
    """:func:`~trl_bporag.utils.stable_seed` in the range torch seeds and generators take everywhere (63 bits)."""
    return stable_seed(*parts) & (2**63 - 1)


class SeededGumbelSampling(LogitsProcessor):
    """Sampling with one random stream per row, so that a row's draws do not depend on the batch it is in.

    Applies temperature / top-k / top-p, then adds Gumbel noise drawn from a generator seeded by the row's seed and the
    decoding step. Greedy decoding on the result is an exact draw from the warped distribution (the Gumbel-max trick):
    ``argmax(log p + G) ~ p``. Used by :func:`generate` when ``sample_seeds`` is given.
    """

    def __init__(self, row_seeds: Sequence[int], temperature: float | None = 1.0, top_p: float | None = None,
                 top_k: int | None = None):
        self.row_seeds = [int(s) for s in row_seeds]
        self.step = 0
        self.warpers = []
        if temperature is not None and temperature != 1.0:
            if temperature <= 0:
                raise ValueError(f"temperature: expected a positive value for sampling, got {temperature}")
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.row_seeds):
            raise ValueError(f"SeededGumbelSampling: {len(self.row_seeds)} row seeds for a batch of {scores.shape[0]}")
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        logp = torch.log_softmax(scores.float(), dim=-1)
        noise = torch.empty(logp.shape, dtype=torch.float32)
        for b, seed in enumerate(self.row_seeds):
            gen = torch.Generator().manual_seed(_mix_seed(seed, self.step))
            u = torch.rand(logp.shape[1], generator=gen).clamp_(1e-10, 1.0 - 1e-7)
            noise[b] = -torch.log(-torch.log(u))
        self.step += 1
        return logp + noise.to(logp.device)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    batch_size: int = 8,
    max_new_tokens: int = DEFAULTS.max_new_tokens,
    num_return_sequences: int = 1,
    seed: int | None = None,
    clean: bool = True,
    sample_seeds: Sequence[int] | None = None,
    progress: str | None = None,
    stop: str | None = None,
    **generate_kwargs,
) -> list[str] | list[list[str]]:
    """Batched generation with left padding; prompts are grouped by length and answers come back in input order.

    ``progress``: a description for a tqdm progress bar over the prompts (None: no bar). ``clean``: each answer is
    :func:`clean_answer` of its completion (cut at ``stop`` when given).

    ``generate_kwargs`` go to ``model.generate`` (``do_sample``, ``num_beams``, ``temperature``, ``top_p``...;
    default greedy). With ``num_return_sequences > 1`` each entry is a list of that many answers.

    Reproducible sampling, two ways:

    * ``sample_seeds`` (one int per prompt, with ``do_sample=True``): each answer is drawn from its own random stream
      (:class:`SeededGumbelSampling`), seeded by the prompt's seed and the answer's number. The answers do not depend
      on the batch size, on the other prompts, or on how prompts are split across processes.
    * ``seed``: the global torch generator is re-seeded per batch (``seed`` + the batch's first position in length
      order). Reproducible for the same prompts and batch size only.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a list of strings, got a single string")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    generate_kwargs.setdefault("do_sample", False)
    row_seeds = None
    n_out = num_return_sequences
    if sample_seeds is not None:
        if not generate_kwargs["do_sample"]:
            raise ValueError("sample_seeds: only used for sampling; pass do_sample=True")
        if len(sample_seeds) != len(prompts):
            raise ValueError(f"sample_seeds: expected one seed per prompt ({len(prompts)}), got {len(sample_seeds)}")
        if generate_kwargs.get("num_beams", 1) > 1:
            raise ValueError("sample_seeds: beam sampling (num_beams > 1) is not supported")
        processor = dict(temperature=generate_kwargs.pop("temperature", 1.0), top_p=generate_kwargs.pop("top_p", None),
                         top_k=generate_kwargs.pop("top_k", None))
        generate_kwargs["do_sample"] = False
        prompts = [p for p in prompts for _ in range(n_out)]  # one row per answer, each with its own stream
        row_seeds = [_mix_seed(s, j) for s in sample_seeds for j in range(n_out)]
        num_return_sequences = 1
    if not generate_kwargs["do_sample"]:
        generate_kwargs["temperature"] = None
        generate_kwargs["top_p"] = None
        generate_kwargs["top_k"] = None
    extra_processors = generate_kwargs.pop("logits_processor", None)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    out: list = [None] * len(prompts)
    device = next(model.parameters()).device
    bar = None
    if progress is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=progress, unit="answer")
    with _left_padding(tokenizer):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            if seed is not None:
                torch.manual_seed(seed + start)
            processors = LogitsProcessorList(extra_processors or [])
            if row_seeds is not None:
                processors.append(SeededGumbelSampling([row_seeds[i] for i in idx], **processor))
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=processors if len(processors) else None,
                **({} if "stopping_criteria" in generate_kwargs else _stop_kwargs(
                    tokenizer, stop, clean, enc["input_ids"].shape[1], generate_kwargs.get("num_beams") or 1)),
                **generate_kwargs,
            )
            texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            if clean:
                texts = [clean_answer(t, stop) for t in texts]
            for j, i in enumerate(idx):
                chunk = texts[j * num_return_sequences : (j + 1) * num_return_sequences]
                out[i] = chunk if num_return_sequences > 1 else chunk[0]
            if bar is not None:
                bar.update(len(idx))
    if bar is not None:
        bar.close()
    if row_seeds is not None and n_out > 1:
        out = [out[i : i + n_out] for i in range(0, len(out), n_out)]
    return out


class StopAtText(StoppingCriteria):
    """Ends a row once the text it has generated (the tokens after ``prompt_width``, decoded as the answers are)
    contains ``stop``. The answer is cut at ``stop`` anyway (:func:`clean_answer`), and a decoded prefix of the tokens
    is a prefix of the decoded whole, so the answers are unchanged; a batch ends when its last row has answered
    instead of after ``max_new_tokens`` steps. (transformers' ``StopStringCriteria`` also matches a stop that begins
    in the prompt, and cannot read some word-level vocabularies.)"""

    def __init__(self, tokenizer, stop: str, prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([self.stop in t for t in texts], dtype=torch.bool, device=input_ids.device)


def _stop_kwargs(tokenizer, stop: str | None, clean: bool, prompt_width: int, num_beams: int = 1) -> dict:
    """``model.generate``'s ``stopping_criteria`` for cleaned greedy or sampled answers cut at ``stop``
    (:class:`StopAtText`); none for beams (a beam that stops early could change which beam wins) and raw completions
    (they keep every token)."""
    if not stop or not clean or num_beams > 1:
        return {}
    return {"stopping_criteria": StoppingCriteriaList([StopAtText(tokenizer, stop, prompt_width)])}


def _supports_logits_to_keep(model) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _plain_kv_cache(model) -> bool:
    """Whether every layer of the model's dynamic cache keeps all keys and values (no sliding window, no state)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config the cache cannot read: take the generic path
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _prefill(model, ids: torch.Tensor, mask: torch.Tensor, keep: dict, share_prefixes: bool = True,
             stats: dict | None = None):
    """KV cache of every token but the last of each left-padded row; ``generate`` reads the last one and goes on.

    Each prompt is read alone, unpadded (causal attention without a mask: the fast kernel, and the numbers of a prompt
    read on its own). With ``share_prefixes`` a row that begins with the same tokens as the row before it starts from
    that row's cache, cut to the shared prefix, and reads only the rest (RAG prompts of one question, or of questions
    that retrieve the same first passages, share the system prompt and the first passages). The caches are then
    left-padded with zeros into one batch cache; the attention mask hides the padding from every later step.
    """
    from transformers import DynamicCache

    width = ids.shape[1] - 1
    per_row: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    previous = None
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        tokens = ids[row, width + 1 - n : -1]  # the prompt without padding and without its last token
        shared = 0
        if share_prefixes and previous is not None:
            m = min(len(tokens), len(previous))
            differ = (tokens[:m] != previous[:m]).nonzero()
            shared = int(differ[0]) if len(differ) else m
        one = DynamicCache(config=model.config)
        if shared:
            for layer, (k, v) in enumerate(per_row[-1]):
                one.update(k[:, :, :shared], v[:, :, :shared], layer)
        if shared < len(tokens):
            model(input_ids=tokens[shared:][None], cache=one, use_cache=True, **keep)
        if stats is not None:
            stats["prompt_tokens"] = stats.get("prompt_tokens", 0) + len(tokens) + 1
            stats["prefilled_tokens"] = stats.get("prefilled_tokens", 0) + len(tokens) - shared
        per_row.append([(layer.keys, layer.values) for layer in one.layers])
        previous = tokens
    cache = DynamicCache(config=model.config)
    for layer in range(len(per_row[0])):
        keys, values = [], []
        for one in per_row:
            k, v = one[layer]
            pad = width - k.shape[2]
            keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
        cache.update(torch.cat(keys), torch.cat(values), layer)
    return cache


@torch.inference_mode()
def generate_candidates(
    model,
    tokenizer,
    prompts: Sequence[str],
    sample_seeds: Sequence[int] | None = None,
    num_beams: int = 1,
    num_samples: int = 1,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULTS.max_new_tokens,
    temperature: float | None = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    clean: bool = True,
    stop: str | None = None,
    share_prefixes: bool = True,
    stats: dict | None = None,
    read_once: bool = True,
) -> tuple[list[str], list[list[str]]]:
    """Per prompt, one beam-search answer (greedy when ``num_beams=1``) and ``num_samples`` seeded samples, reading
    each prompt once. ``clean`` / ``stop``: as in :func:`generate`.

    Each prompt of a batch is read once into a KV cache (alone and unpadded; with ``share_prefixes``, a prompt that
    begins like the one before it reads only what differs, see below); the beam search continues from a copy of the
    batch cache repeated ``num_beams`` times, the samples from the cache repeated ``num_samples`` times. Calling
    :func:`generate` twice (beam, then samples) reads every prompt ``num_beams + num_samples`` times; on long RAG
    prompts that reading (the prefill) is most of the cost.

    ``share_prefixes``: the prompts are ordered by their tokens, so that prompts with a common beginning (the lists of
    one question that differ from the third passage on, or questions whose first passages are the same) are
    neighbours, and each prompt reuses its neighbour's cache for the tokens they share. Otherwise the prompts are
    batched by length.

    The answers are those of :func:`generate` with the same arguments (``sample_seeds``: the same random streams), up
    to floating-point rounding, because a prompt is read in chunks instead of at once. With ``num_samples=0`` only the
    beam (or greedy) answers are made. ``stats`` (a dict) receives ``prompt_tokens`` and ``prefilled_tokens``.

    ``read_once=False`` (and models whose cache layers cannot be cut and padded: sliding-window or linear attention)
    takes the plain way instead: one batched :func:`generate` call for the beams and one for the samples.

    Returns (beam answers, sample answers: a list of ``num_samples`` per prompt), in input order.
    """
    import copy

    if isinstance(prompts, str):
        raise ValueError("prompts: expected a list of strings, got a single string")
    if num_beams < 1 or num_samples < 0:
        raise ValueError(f"num_beams >= 1 and num_samples >= 0 expected, got {num_beams} and {num_samples}")
    if num_samples and (sample_seeds is None or len(sample_seeds) != len(prompts)):
        raise ValueError(f"sample_seeds: expected one seed per prompt ({len(prompts)}), got "
                         f"{None if sample_seeds is None else len(sample_seeds)}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    token_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if min((len(t) for t in token_ids), default=2) < 2:
        raise ValueError("prompts: every prompt needs at least 2 tokens")
    if not read_once or not _plain_kv_cache(model):  # sliding-window or linear-attention layers cannot be cut
        beam_kw = {"num_beams": num_beams} if num_beams > 1 else {}
        beams = generate(model, tokenizer, list(prompts), batch_size=batch_size, max_new_tokens=max_new_tokens,
                         clean=clean, stop=stop, **beam_kw)
        if not num_samples:
            return beams, [[] for _ in prompts]
        samples = generate(model, tokenizer, list(prompts), batch_size=batch_size, max_new_tokens=max_new_tokens,
                           clean=clean, stop=stop, num_return_sequences=num_samples, sample_seeds=sample_seeds,
                           do_sample=True,
                           temperature=temperature, top_p=top_p, top_k=top_k)
        return beams, [s if num_samples > 1 else [s] for s in samples]
    if share_prefixes:
        order = sorted(range(len(prompts)), key=lambda i: token_ids[i])
    else:
        order = sorted(range(len(prompts)), key=lambda i: -len(token_ids[i]))
    beams: list = [None] * len(prompts)
    samples: list = [[] for _ in prompts]
    device = next(model.parameters()).device
    keep = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}
    common = dict(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, do_sample=False,
                  temperature=None, top_p=None, top_k=None)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(token_ids[i])) + token_ids[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (width - len(token_ids[i])) + [1] * len(token_ids[i]) for i in idx],
                            device=device)
        cache = _prefill(model, ids, mask, keep, share_prefixes=share_prefixes, stats=stats)
        if num_samples:
            beam_cache = copy.deepcopy(cache)
        else:
            beam_cache, cache = cache, None
        beam_cache.batch_repeat_interleave(num_beams)
        out = model.generate(input_ids=ids, attention_mask=mask, cache=beam_cache, num_beams=num_beams, **common,
                             **_stop_kwargs(tokenizer, stop, clean, width, num_beams))
        beam_texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        del beam_cache
        sample_texts = []
        if num_samples:
            cache.batch_repeat_interleave(num_samples)
            seeds = [_mix_seed(sample_seeds[i], j) for i in idx for j in range(num_samples)]
            processor = SeededGumbelSampling(seeds, temperature=temperature, top_p=top_p, top_k=top_k)
            out = model.generate(input_ids=ids.repeat_interleave(num_samples, 0),
                                 attention_mask=mask.repeat_interleave(num_samples, 0), cache=cache,
                                 logits_processor=LogitsProcessorList([processor]), **common,
                                 **_stop_kwargs(tokenizer, stop, clean, width))
            sample_texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        if clean:
            beam_texts = [clean_answer(t, stop) for t in beam_texts]
            sample_texts = [clean_answer(t, stop) for t in sample_texts]
        for j, i in enumerate(idx):
            beams[i] = beam_texts[j]
            samples[i] = sample_texts[j * num_samples : (j + 1) * num_samples]
    return beams, samples
