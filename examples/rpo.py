"""RPO: train a retriever with set-level DPO on pairs from build_rpo_pairs.py.

TRL's ``trl/scripts/dpo.py`` with ``DPOTrainer`` -> ``SetDPOTrainer`` and ``DPOConfig`` -> ``SetDPOConfig``; same parser
tuple (ScriptArguments, config, ModelConfig), ``--config yaml`` supported.

    python examples/rpo.py --dataset_name runs/rpo-pairs --output_dir runs/retriever-rpo --k 5 --beta 0.1
    accelerate launch examples/rpo.py --dataset_name runs/rpo-pairs --output_dir runs/retriever-rpo --bf16

``--dataset_name`` is a Hub id or a ``save_to_disk`` folder; a single Dataset is split into train/test when
``--eval_strategy`` is not "no" (``--eval_fraction``). ``--model_name_or_path`` defaults to all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from trl_bporag import DEFAULT_RETRIEVER, SetDPOConfig, SetDPOTrainer


@dataclass
class RPOScriptArguments(ScriptArguments):
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out pairs when the data set has no test split"})


def load_pairs(name: str, script_args: RPOScriptArguments, need_eval: bool) -> DatasetDict:
    if os.path.isdir(name) and (os.path.isfile(os.path.join(name, "dataset_info.json"))
                                or os.path.isfile(os.path.join(name, "dataset_dict.json"))):
        data = load_from_disk(name)
    else:
        data = load_dataset(name, name=script_args.dataset_config)
    if isinstance(data, Dataset):
        if need_eval:
            data = data.train_test_split(test_size=script_args.eval_fraction, seed=0)
            data = DatasetDict({script_args.dataset_train_split: data["train"],
                                script_args.dataset_test_split: data["test"]})
        else:
            data = DatasetDict({script_args.dataset_train_split: data})
    return data


def main(script_args, training_args, model_args):
    need_eval = training_args.eval_strategy != "no"
    dataset = load_pairs(script_args.dataset_name, script_args, need_eval)
    trainer = SetDPOTrainer(
        model=model_args.model_name_or_path or DEFAULT_RETRIEVER,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if need_eval else None,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Retriever saved to {training_args.output_dir} (a sentence-transformers folder).")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    parser = TrlParser((RPOScriptArguments, SetDPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
