"""The experiments' options: the same flags as ever, a config file under the command line, typed values."""

import argparse

import pytest

from ina.experiments.arguments import GlueArguments, SquadArguments, add_options, parse_experiment
from ina.experiments.cli import register
from ina.foundation.errors import UsageError

ADAPTER = ["activation", "inhibition", "lora_alpha", "lora_dropout", "lora_r", "lora_target_modules"]
ADAPTER += ["modules_to_save", "torch_threads", "test_file", "dev_fraction", "overwrite_output_dir"]
FLAGS = {
    "glue": [
        *ADAPTER,
        *("data_dir", "dataset_name", "ignore_mismatched_sizes", "max_eval_samples", "max_seq_length"),
        *(
            "max_train_samples",
            "model_name_or_path",
            "neutral_margin",
            "output_dir",
            "split_seed",
            "task_name",
        ),
        *("tokenizer_name", "train_file", "validation_file", "validation_mismatched_file"),
    ],
    "squad": [
        *ADAPTER,
        *("doc_stride", "max_answer_length", "max_eval_samples", "max_seq_length", "max_train_samples"),
        *("model_name_or_path", "n_best_size", "null_score_diff_threshold", "output_dir", "tokenizer_name"),
        *("train_file", "validation_file", "version_2_with_negative"),
    ],
    "sweep": [
        *("activation", "experiment", "inhibition", "lora_r", "output_dir", "seeds"),
        *("learning_rate", "select_on", "dev_fraction"),
        *("backend", "ray_address", "resources_per_run", "max_retries", "on_failure"),
    ],
}


def command_parsers():
    parser = argparse.ArgumentParser(prog="ina")
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    return subparsers.choices


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_every_command_keeps_its_flags(command):
    parser = command_parsers()[command]
    flags = {
        s for action in parser._actions for s in action.option_strings if s.startswith("--") and s != "--help"
    }
    assert flags == {f"--{name}" for name in FLAGS[command]} | ({"--task"} if command == "glue" else set())


def parse(experiment, argv):
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_options(parser, experiment)
    namespace, extra = parser.parse_known_args(argv)
    return parse_experiment(experiment, namespace, extra)


def test_defaults_are_the_authors_recipe():
    arguments, training = parse("squad", [])
    assert isinstance(arguments, SquadArguments) and training == []
    assert (arguments.lora_r, arguments.lora_alpha, arguments.lora_dropout, arguments.inhibition) == (
        4,
        16,
        0.1,
        0.3,
    )
    assert (arguments.max_seq_length, arguments.doc_stride, arguments.version_2_with_negative) == (
        384,
        128,
        False,
    )


def test_config_file_under_the_command_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "task: mrpc\nlora_r: 8\nlora_target_modules: [query, value]\nnum_train_epochs: 3\nseed: 4\n"
    )
    arguments, training = parse(
        "glue", [str(config), "--lora_r", "2", "--ignore_mismatched_sizes", "--seed", "5"]
    )
    assert isinstance(arguments, GlueArguments)
    assert (arguments.task_name, arguments.lora_r, arguments.lora_target_modules) == (
        "mrpc",
        2,
        "query,value",
    )
    assert arguments.ignore_mismatched_sizes is True
    # TrainingArguments values of the file come first, so the command line's flags win
    assert training == ["--num_train_epochs", "3", "--seed", "4", "--seed", "5"]
    json_config = tmp_path / "run.json"
    json_config.write_text('{"max_seq_length": 64}')
    assert parse("glue", [str(json_config)])[0].max_seq_length == 64


def test_unreadable_config_file_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"config file .*missing\.yaml"):
        parse("glue", [str(tmp_path / "missing.yaml")])
