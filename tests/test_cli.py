"""`trl-bporag <stage>`: the installed command dispatches to the stage scripts in trl_bporag/scripts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from trl_bporag import cli

REPO = Path(__file__).resolve().parents[1]


def test_the_console_entry_point_is_installed_and_lists_every_stage(capsys):
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("trl-bporag") == "trl_bporag.cli:main"
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("build-rpo-pairs", "rpo", "sft", "build-gpo-pairs", "gpo", "evaluate", "index", "bporag"):
        assert f"  {stage} " in out
    assert cli.main(["train"]) == 2 and "unknown stage 'train'" in capsys.readouterr().err


@pytest.mark.parametrize("stage", list(cli.STAGES))
def test_each_subcommand_prints_its_flags(stage, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([stage, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    flag = {"rpo": "--dataset_name", "gpo": "--dataset_name", "bporag": "--rpo_queries"}.get(stage, "--dataset")
    assert out.startswith(f"usage: trl-bporag {stage}") and flag in out


def test_the_installed_command_runs_a_stage_end_to_end(tmp_path, tiny_retriever_dir, toy_corpus, toy_split):
    from conftest import write_beir

    exe = shutil.which("trl-bporag", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert exe, "trl-bporag is not on PATH: pip install -e . creates it"
    write_beir(tmp_path / "qa", toy_corpus, toy_split)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_BPORAG_CPU_BF16": "0"}
    run = subprocess.run([exe, "index", "--dataset", str(tmp_path / "qa"), "--retriever", tiny_retriever_dir,
                          "--output_dir", str(tmp_path / "index")], cwd=tmp_path, capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["passages_encoded"] == len(toy_corpus)
    assert {"index.faiss", "metadata.json"} <= {p.name for p in (tmp_path / "index").iterdir()}


STAGE_PARSERS = {"build_rpo_pairs.yaml": "build_rpo_pairs", "rpo.yaml": "rpo", "sft.yaml": "sft",
                 "build_gpo_pairs.yaml": "build_gpo_pairs", "gpo.yaml": "gpo", "bporag.yaml": "bporag"}


def _parse(script: str, argv: list[str]):
    import importlib

    return importlib.import_module(f"trl_bporag.scripts.{script}").parse(argv)


@pytest.mark.parametrize("name", sorted(STAGE_PARSERS))
def test_each_shipped_stage_config_is_read_by_its_stage(name):
    import yaml

    from trl_bporag import configs

    values = yaml.safe_load(Path(configs.path(name)).read_text())
    parsed = _parse(STAGE_PARSERS[name], ["--config", configs.path(name)])
    merged = {}
    for part in parsed:
        merged.update({k: v for k, v in vars(part).items()})
    for key, value in values.items():
        got = merged[key]
        got = [str(v) for v in got] if isinstance(got, list) else got
        if key == "report_to" and value == "none":
            assert got in ([], ["none"], "none")  # transformers turns "none" into []
            continue
        assert got == value or str(got) == str(value), (key, got, value)


def test_a_shipped_config_name_resolves_and_flags_override_it():
    from trl_bporag import configs

    assert "accelerate/ddp.yaml" in configs.names() and configs.path("rpo") == configs.path("rpo.yaml")
    with pytest.raises(ValueError, match="not a shipped configuration"):
        configs.path("nope")
    argv = cli._shipped_configs(["--config", "rpo.yaml", "--learning_rate", "1e-5"])
    assert argv[1] == configs.path("rpo.yaml")
    (_, training_args, _) = _parse("rpo", argv)
    assert training_args.learning_rate == 1e-5 and training_args.mini_batch_size == 16


@pytest.mark.parametrize("name, kind", [("accelerate/ddp.yaml", "MULTI_GPU"),
                                        ("accelerate/deepspeed_zero2.yaml", "DEEPSPEED"),
                                        ("accelerate/fsdp.yaml", "FSDP")])
def test_the_shipped_accelerate_configs_parse(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    from trl_bporag import configs

    config = load_config_from_file(configs.path(name))
    assert str(config.distributed_type).endswith(kind) and config.num_processes == 8
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_the_shipped_stage_configs_run_one_after_another(tmp_path, tiny_retriever_dir, tiny_generator_dir,
                                                         monkeypatch):
    """Each shipped stage YAML runs as `--config <name>`, the models and sizes overridden by flags (tiny models, a
    tiny data set), every other value the file's: RPO pairs -> RPO -> GPO pairs under the tuned retriever -> GPO."""
    import contextlib
    import functools

    import torch
    from datasets import load_from_disk
    from sentence_transformers import SentenceTransformer

    from conftest import write_beir
    from test_gpo import make_split, word_judge
    from test_rpo_builder import make_corpus
    from trl_bporag import configs
    from trl_bporag.artifacts import read_bporag_config
    from trl_bporag.preferences import GenerationPreferenceBuilder
    from trl_bporag.preferences import gpo as gpo_builder
    from trl_bporag.scripts import build_gpo_pairs, build_rpo_pairs, gpo, rpo

    write_beir(tmp_path / "qa", make_corpus(40), make_split(), "train")
    data, out = str(tmp_path / "qa"), tmp_path / "runs"
    rpo_pairs = build_rpo_pairs.main(*build_rpo_pairs.parse([
        "--config", configs.path("build_rpo_pairs.yaml"), "--dataset", data, "--retriever", tiny_retriever_dir, "--output_dir",
        str(out / "rpo-pairs"), "--max_queries", "8", "--top_n", "12"]))
    rows = load_from_disk(str(out / "rpo-pairs"))
    assert rpo_pairs["config"]["judge"].startswith("answer_hit") and rpo_pairs["config"]["pairing"] == "listwise"
    assert len(rows) >= 1 and "list_scores" in rows.column_names  # listwise rows: every window and its score

    trainer = rpo.main(*rpo.parse(["--config", configs.path("rpo.yaml"), "--dataset_name", str(out / "rpo-pairs"), "--output_dir",
                                   str(out / "retriever-rpo"), "--model_name_or_path", tiny_retriever_dir,
                                   "--per_device_train_batch_size", "4", "--use_cpu", "true"]))
    assert trainer.args.reference == "free" and trainer.args.mini_batch_size == 16 and trainer.args.beta == 10.0
    before = SentenceTransformer(tiny_retriever_dir, device="cpu").state_dict()
    after = SentenceTransformer(str(out / "retriever-rpo"), device="cpu").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the retriever trained

    events = []
    generate = gpo_builder.generate_candidates

    def recorded_generate(*args, **kwargs):
        events.append("generate")
        return generate(*args, **kwargs)

    @contextlib.contextmanager
    def recording():
        events.append("large blocks mapped")
        yield
        events.append("heap again")

    monkeypatch.setattr(build_gpo_pairs, "GenerationPreferenceBuilder",  # the tiny generator never hits an answer
                        functools.partial(GenerationPreferenceBuilder, judge=word_judge))
    monkeypatch.setattr(gpo_builder, "generate_candidates", recorded_generate)
    monkeypatch.setattr(gpo_builder, "large_allocations_returned", recording)
    build_gpo_pairs.main(*build_gpo_pairs.parse([
        "--config", configs.path("build_gpo_pairs.yaml"), "--dataset", data, "--retriever", str(out / "retriever-rpo"),
        "--generator", tiny_generator_dir, "--output_dir", str(out / "gpo-pairs"), "--max_queries", "8",
        "--query_offset", "0", "--num_samples", "2", "--max_length", "256", "--max_new_tokens", "4"]))
    stats = json.loads((out / "gpo-pairs" / "stats.json").read_text())
    assert stats["config"]["pairing"] == "best_worst" and stats["stats"]["pairs"] >= 1
    # the generation's KV caches come from their own memory maps (a heap they fragment grew to 4.2 GiB)
    assert events and events == ["large blocks mapped", "generate", "heap again"] * (len(events) // 3)

    trainer = gpo.main(*gpo.parse(["--config", configs.path("gpo.yaml"), "--dataset_name", str(out / "gpo-pairs"), "--output_dir",
                                   str(out / "generator-gpo"), "--model_name_or_path", tiny_generator_dir,
                                   "--max_length", "256", "--lora_r", "4", "--lora_alpha", "8", "--use_cpu", "true"]))
    assert trainer.args.loss_type == ["sigmoid", "sft"] and trainer.args.beta == 0.5
    assert (out / "generator-gpo" / "adapter_config.json").is_file()
    aligned = read_bporag_config(out / "generator-gpo")
    assert os.path.realpath(aligned["retriever"]) == os.path.realpath(out / "retriever-rpo")
