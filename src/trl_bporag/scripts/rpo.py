"""RPO: train a retriever with set-level DPO on pairs from build_rpo_pairs.py.

TRL's ``trl/scripts/dpo.py`` with ``DPOTrainer`` -> ``SetDPOTrainer`` and ``DPOConfig`` -> ``SetDPOConfig``; same parser
tuple (ScriptArguments, config, ModelConfig), ``--config yaml`` supported.

    trl-bporag rpo --dataset_name runs/rpo-pairs --output_dir runs/retriever-rpo
    accelerate launch -m trl_bporag.scripts.rpo --dataset_name runs/rpo-pairs --output_dir runs/retriever-rpo

The defaults are the measured best recipe (docs/benchmarks.md, "RPO against the label-free anchors") on the
listwise rows ``build_rpo_pairs.py`` writes by default: ``--reference free``, ``--loss_type sigmoid`` (its
Plackett-Luce form on listwise rows), β 10, one epoch of batch 16 (TRL's default of 3 epochs overfits), lr 2e-5,
``--mini_batch_size 16`` (GradCache: memory flat in the batch size); bf16 only where the hardware computes it
natively. TRL's model flags (``--model_revision``, ``--trust_remote_code``, ``--attn_implementation``, ``--dtype``)
reach the retriever.

``--dataset_name`` is a Hub id or a ``save_to_disk`` folder; a single Dataset is split into train/test when
``--eval_strategy`` is not "no" (``--eval_fraction``). ``--model_name_or_path`` defaults to all-MiniLM-L6-v2.
k is read from the pairs (their lists hold k passages) unless ``--k`` is given; the saved folder records it and the
score for the pipeline. ``--retrieval_eval_dataset ../shared/data/squad-dev`` measures Recall@k on its test split before
and after training; the model card records both (as does ``--push_to_hub --hub_model_id user/name``). With an
``--eval_strategy``, the same data set's ``--retrieval_dev_split`` is evaluated at every evaluation
(:func:`trl_bporag.evaluation.retrieval_evaluator`), so ``--load_best_model_at_end --metric_for_best_model
eval_squad-dev-dev_cosine_accuracy@1`` keeps the step with the best dev Recall@1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_bporag import DEFAULT_RETRIEVER, SetDPOConfig, SetDPOTrainer, load_retriever
from trl_bporag.evaluation import retrieval_evaluator
from trl_bporag.models import model_load_kwargs
from trl_bporag.monitor import large_allocations_returned
from trl_bporag.preferences import load_pairs
from trl_bporag.scripts import finish_training
from trl_bporag.settings import DOCUMENT_PROMPT_HELP, QUERY_PROMPT_HELP, apply_retriever_prompts
from trl_bporag.utils import quiet_known_warnings


@dataclass
class RPOScriptArguments(ScriptArguments):
    query_prompt: str | None = field(default=None, metadata={"help": QUERY_PROMPT_HELP})
    document_prompt: str | None = field(default=None, metadata={"help": DOCUMENT_PROMPT_HELP})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out pairs when the data set has no test split"})
    retrieval_eval_dataset: str | None = field(
        default=None,
        metadata={"help": "BEIR folder or HF QA data set: measure Recall@k / answer-hit@k before and after training "
                  "and record both in the model card"},
    )
    retrieval_eval_split: str = field(default="test")
    retrieval_eval_max_queries: int | None = field(default=None)
    retrieval_eval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    retrieval_dev_split: str = field(default="dev", metadata={"help": "split of --retrieval_eval_dataset evaluated "
                                                                      "during training (with --eval_strategy)"})


def retrieval_eval(model, script_args) -> dict[str, float]:
    """Retrieval metrics of ``model`` on ``--retrieval_eval_dataset`` (a fresh in-memory index, no generation)."""
    from trl_bporag import RAGPipeline, load_rag_dataset

    data = load_rag_dataset(script_args.retrieval_eval_dataset, script_args.retrieval_eval_split)
    pipe = RAGPipeline.from_pretrained(retriever=model, generator=None, corpus=data.corpus, cache_index=False)
    metrics = pipe.evaluate(data.split.head(script_args.retrieval_eval_max_queries),
                            ks=script_args.retrieval_eval_ks)["metrics"]
    return {name: value for name, value in metrics.items() if "@" in name}


#: The measured best recipe (docs/benchmarks.md, "RPO against the label-free anchors"): reference-free (the
#: Plackett-Luce form on listwise rows), one epoch of batch 16 (TRL's 3 epochs overfit); GradCache in mini-batches of
#: 16 texts, so the step's memory does not grow with the batch (bench/rpo_memory.py: under 2.5 GiB at batch 16 and 64).
RECIPE_DEFAULTS = {"reference": "free", "num_train_epochs": 1, "per_device_train_batch_size": 16,
                   "mini_batch_size": 16, "report_to": "none"}


def main(script_args, training_args, model_args):
    need_eval = training_args.eval_strategy != "no"
    # TRL's model flags (revision, trust_remote_code, attention implementation, dtype) reach the retriever as
    # model_init_kwargs, as trl/scripts/dpo.py passes them to the policy
    training_args.model_init_kwargs = {**model_load_kwargs(model_args, "retriever"),
                                       **(training_args.model_init_kwargs or {})}
    dataset = load_pairs(script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split,
                         script_args.dataset_test_split, need_eval, script_args.eval_fraction)
    evaluator = None
    if need_eval and script_args.retrieval_eval_dataset:
        evaluator = retrieval_evaluator(script_args.retrieval_eval_dataset, script_args.retrieval_dev_split,
                                        script_args.retrieval_eval_max_queries, script_args.retrieval_eval_ks)
    model = model_args.model_name_or_path or DEFAULT_RETRIEVER
    if script_args.query_prompt is not None or script_args.document_prompt is not None:
        # the prompts go into the model before the trainer copies a reference: trained, saved and served with them
        model = apply_retriever_prompts(load_retriever(model, **training_args.retriever_kwargs()),
                                        script_args.query_prompt, script_args.document_prompt)
    trainer = SetDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if need_eval else None,
        peft_config=get_peft_config(model_args),
        evaluator=evaluator,
    )
    card_metrics = None
    if script_args.retrieval_eval_dataset and trainer.is_world_process_zero():
        card_metrics = {"dataset": script_args.retrieval_eval_dataset, "split": script_args.retrieval_eval_split,
                        "before": retrieval_eval(trainer.model, script_args)}
    with large_allocations_returned():  # freed large buffers go back to the OS (a flat resident size)
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if card_metrics is not None:
        card_metrics["after"] = retrieval_eval(trainer.accelerator.unwrap_model(trainer.model), script_args)
        trainer.set_retrieval_metrics(card_metrics)
        trainer.accelerator.print(f"Retrieval metrics: {card_metrics}")
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    trainer.accelerator.print(f"Retriever saved to {training_args.output_dir} (a sentence-transformers folder).")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def parse(argv: list[str] | None = None) -> tuple:
    """The flags (``argv``, default ``sys.argv[1:]``; ``--config file.yaml`` as in TRL) as this script's dataclasses,
    with the recipe's defaults (:data:`RECIPE_DEFAULTS`)."""
    parser = TrlParser((RPOScriptArguments, SetDPOConfig, ModelConfig))
    parser.set_defaults_with_config(**RECIPE_DEFAULTS)
    return parser.parse_args_and_config(argv)


def cli(argv: list[str] | None = None) -> None:
    """The command line: `trl-bporag rpo [flags]` (or `python examples/rpo.py`); ``argv``: the
    flags (default: ``sys.argv[1:]``)."""
    quiet_known_warnings()
    script_args, training_args, model_args = parse(argv)
    finish_training(main(script_args, training_args, model_args))


if __name__ == "__main__":
    cli()
