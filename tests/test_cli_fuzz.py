"""Bad input on every command: exit code 2, one line on stderr naming the flag, no traceback, nothing written.

Each row of `CASES` is a command line a user could type with one thing wrong in it. The commands run
in this process through `ina.cli.main` (what the `ina` script calls), from an empty working folder;
`test_console_script` runs a few of them as real `ina` processes, where warnings and logging reach
stderr unfiltered. Nearly every case must fail before a model is loaded, which keeps the table fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ina.cli import main


@dataclass(frozen=True)
class Case:
    """A command line (``{name}`` fields are fixture paths) and the text its error line must contain."""

    id: str
    argv: str
    names: str


# fmt: off
CASES: list[Case] = [
    # `ina` itself
    Case("ina-unknown-command", "nosuchcommand", "nosuchcommand"),
    Case("ina-unknown-flag", "--nosuchflag", "--nosuchflag"),
    Case("ina-unknown-flag-before-command", "--nosuchflag info {adapter}", "--nosuchflag"),
    # ina info
    Case("info-missing-path", "info {missing}", "PATH"),
    Case("info-file-not-folder", "info {plain_file}", "PATH"),
    Case("info-folder-without-config", "info {empty_dir}", "adapter_config.json"),
    Case("info-malformed-config", "info {bad_json}", "adapter_config.json"),
    Case("info-config-is-a-list", "info {config_list}", "adapter_config.json"),
    Case("info-config-binary", "info {config_binary}", "adapter_config.json"),
    Case("info-unknown-peft-type", "info {wrong_peft_type}", "peft_type"),
    Case("info-config-out-of-range", "info {config_out_of_range}", "inhibition"),
    Case("info-truncated-weights", "info {truncated}", "adapter_model.safetensors"),
    Case("info-garbled-weights", "info {garbled}", "adapter_model.safetensors"),
    Case("info-nan-weights", "info {nan}", "adapter_model.safetensors"),
    Case("info-empty-weights", "info {empty_weights}", "adapter_model.safetensors"),
    Case("info-no-weights", "info {no_weights}", "adapter_model"),
    Case("info-checksum-mismatch", "info {checksum}", "sha256"),
    Case("info-unknown-flag", "info {adapter} --json", "--json"),
    Case("info-no-path", "info", "PATH"),
    # ina convert
    Case("convert-missing-src", "convert {missing} {out}", "SRC"),
    Case("convert-src-is-file", "convert {plain_file} {out}", "SRC"),
    Case("convert-dst-exists", "convert {adapter} {empty_dir}", "DST"),
    Case("convert-dst-is-file", "convert {adapter} {plain_file}", "DST"),
    Case("convert-dst-under-file", "convert {adapter} {plain_file}/sub", "DST"),
    Case("convert-malformed-config", "convert {bad_json} {out}", "adapter_config.json"),
    Case("convert-truncated-weights", "convert {truncated} {out}", "adapter_model.safetensors"),
    Case("convert-garbled-weights", "convert {garbled} {out}", "adapter_model.safetensors"),
    Case("convert-nan-weights", "convert {nan} {out}", "adapter_model.safetensors"),
    Case("convert-no-dst", "convert {adapter}", "DST"),
    Case("convert-dst-holds-src", "convert {nest}/ad {nest}", "DST"),
    Case("convert-dst-inside-src", "convert {adapter} {adapter}/converted", "DST"),
    # ina generate
    Case("generate-adapter-missing", "generate hi --base_model {base} --adapter a={missing}", "--adapter"),
    Case("generate-adapter-is-file", "generate hi --base_model {base} --adapter a={plain_file}", "--adapter"),
    Case("generate-adapter-truncated", "generate hi --base_model {base} --adapter a={truncated}", "--adapter"),
    Case("generate-adapter-garbled", "generate hi --base_model {base} --adapter a={garbled}", "--adapter"),
    Case("generate-adapter-nan", "generate hi --base_model {base} --adapter a={nan}", "--adapter"),
    Case("generate-adapter-bad-config", "generate hi --base_model {base} --adapter a={bad_json}", "--adapter"),
    Case("generate-adapter-bad-config-no-base", "generate hi --adapter a={bad_json}", "--adapter"),
    Case("generate-adapter-bad-name", "generate hi --base_model {base} --adapter a.b={adapter}", "--adapter"),
    Case("generate-adapter-twice", "generate hi --adapter a={adapter} --adapter a={adapter}", "--adapter"),
    Case("generate-base-missing", "generate hi --base_model {missing}", "--base_model"),
    Case("generate-base-is-file", "generate hi --base_model {plain_file}", "--base_model"),
    Case("generate-prompts-file-missing", "generate --base_model {base} --prompts_file {missing}", "--prompts_file"),
    Case("generate-prompts-file-binary", "generate --base_model {base} --prompts_file {binary_jsonl}", "--prompts_file"),
    Case("generate-prompts-file-bad-line-3", "generate --base_model {base} --prompts_file {prompts_bad_line3}", ":3"),
    Case("generate-prompts-file-bad-array", "generate --base_model {base} --prompts_file {prompts_bad_array}", "--prompts_file"),
    Case("generate-prompts-file-no-instruction", "generate --base_model {base} --prompts_file {prompts_no_instruction}", "--prompts_file"),
    Case("generate-prompts-file-no-instruction-line", "generate --base_model {base} --prompts_file {prompts_no_instruction}", "no-instruction.jsonl:1: "),
    Case("generate-adapter-bare-unusable-name", "generate hi --base_model {base} --adapter {plain_file}", "is a file"),
    Case("generate-template-missing-file", "generate hi --base_model {base} --prompt_template_name {missing}.json", "--prompt_template_name"),
    Case("generate-template-unknown-name", "generate hi --base_model {base} --prompt_template_name nosuch", "--prompt_template_name"),
    Case("generate-template-malformed", "generate hi --base_model {base} --prompt_template_name {bad_template}", "--prompt_template_name"),
    Case("generate-max-new-tokens-0", "generate hi --base_model {base} --max_new_tokens 0", "--max_new_tokens"),
    Case("generate-temperature-negative", "generate hi --base_model {base} --temperature -1", "--temperature"),
    Case("generate-top-p-0", "generate hi --base_model {base} --top_p 0", "--top_p"),
    Case("generate-top-p-2", "generate hi --base_model {base} --top_p 2", "--top_p"),
    Case("generate-num-beams-0", "generate hi --base_model {base} --num_beams 0", "--num_beams"),
    Case("generate-batch-size-text", "generate hi --base_model {base} --batch_size x", "--batch_size"),
    Case("generate-seed-text", "generate hi --base_model {base} --seed abc", "--seed"),
    Case("generate-no-prompt", "generate --base_model {base}", "--prompts_file"),
    Case("generate-output-is-folder", "generate hi --base_model {base} --output {empty_dir}", "--output"),
    Case("generate-output-under-file", "generate hi --base_model {base} --output {plain_file}/a.jsonl", "--output"),
    Case("generate-unknown-flag", "generate hi --base_model {base} --nosuchflag", "--nosuchflag"),
    # ina finetune
    Case("finetune-data-missing", "finetune --base_model {base} --data_path {missing}.json --output_dir {out}", "--data_path"),
    Case("finetune-data-binary-json", "finetune --base_model {base} --data_path {binary_json} --output_dir {out}", "--data_path"),
    Case("finetune-data-binary-jsonl", "finetune --base_model {base} --data_path {binary_jsonl} --output_dir {out}", "--data_path"),
    Case("finetune-data-bad-records", "finetune --base_model {base} --data_path {bad_records} --output_dir {out}", "--skip_bad_records"),
    Case("finetune-data-empty-folder", "finetune --base_model {base} --data_path {empty_dir} --output_dir {out}", "--data_path"),
    Case("finetune-config-missing", "finetune --base_model {base} --config {missing}.yaml --output_dir {out}", "--config"),
    Case("finetune-config-bad-yaml", "finetune --base_model {base} --config {bad_yaml} --output_dir {out}", "--config"),
    Case("finetune-config-yaml-list", "finetune --base_model {base} --config {yaml_list} --output_dir {out}", "--config"),
    Case("finetune-config-bad-json", "finetune --base_model {base} --config {bad_json_config} --output_dir {out}", "--config"),
    Case("finetune-config-binary", "finetune --base_model {base} --config {binary_yaml} --output_dir {out}", "--config"),
    Case("finetune-config-bad-value", "finetune --base_model {base} --config {yaml_bad_value} --output_dir {out}", "lora_r"),
    Case("finetune-activation-unknown", "finetune --base_model {base} --activation foo --output_dir {out}", "--activation"),
    Case("finetune-inhibition-out-of-range", "finetune --base_model {base} --inhibition 1.5 --output_dir {out}", "--inhibition"),
    Case("finetune-lora-r-0", "finetune --base_model {base} --lora_r 0 --output_dir {out}", "--lora_r"),
    Case("finetune-lora-r-text", "finetune --base_model {base} --lora_r abc --output_dir {out}", "--lora_r"),
    Case("finetune-lora-dropout-1", "finetune --base_model {base} --lora_dropout 1 --output_dir {out}", "--lora_dropout"),
    Case("finetune-batch-not-multiple", "finetune --base_model {base} --batch_size 10 --micro_batch_size 3 --output_dir {out}", "--batch_size"),
    Case("finetune-val-set-size-negative", "finetune --base_model {base} --val_set_size -1 --output_dir {out}", "--val_set_size"),
    Case("finetune-dtype-unknown", "finetune --base_model {base} --dtype float8 --output_dir {out}", "--dtype"),
    Case("finetune-targets-bad-json", "finetune --base_model {base} --lora_target_modules [bad --output_dir {out}", "--lora_target_modules"),
    Case("finetune-quantize-twice", "finetune --base_model {base} --load_in_8bit --load_in_4bit --output_dir {out}", "--load_in_4bit"),
    Case("finetune-template-missing-file", "finetune --base_model {base} --prompt_template_name {missing}.json --output_dir {out}", "--prompt_template_name"),
    Case("finetune-base-missing", "finetune --base_model {missing} --output_dir {out}", "--base_model"),
    Case("finetune-base-is-file", "finetune --base_model {plain_file} --output_dir {out}", "--base_model"),
    Case("finetune-output-dir-is-file", "finetune --base_model {base} --output_dir {plain_file}", "--output_dir"),
    Case("finetune-resume-missing", "finetune --base_model {base} --resume_from_checkpoint {missing} --output_dir {out}", "--resume_from_checkpoint"),
    Case("finetune-max-steps-text", "finetune --base_model {base} --max_steps abc --output_dir {out}", "--max_steps"),
    Case("finetune-unknown-flag", "finetune --base_model {base} --nosuchflag 1 --output_dir {out}", "--nosuchflag"),
    Case("finetune-deepspeed-missing", "finetune --base_model {base} --deepspeed {missing}.json --output_dir {out}", "--deepspeed"),
    Case("finetune-output-dir-is-base", "finetune --base_model {base} --data_path {bad_records} --output_dir {base} --overwrite_output_dir", "is --base_model"),
    Case("finetune-output-dir-inside-base", "finetune --base_model {base} --data_path {bad_records} --output_dir {base}/out", "lies inside --base_model"),
    Case("finetune-output-dir-holds-data", "finetune --base_model {base} --data_path {nest}/notes.txt --output_dir {nest} --overwrite_output_dir", "holds --data_path"),
    Case("finetune-output-dir-is-checkpoint", "finetune --base_model {base} --resume_from_checkpoint {adapter} --output_dir {adapter} --overwrite_output_dir", "is --resume_from_checkpoint"),
    Case("finetune-output-dir-inside-checkpoint", "finetune --base_model {base} --resume_from_checkpoint {adapter} --output_dir {adapter}/run", "lies inside --resume_from_checkpoint"),
    Case("finetune-output-dir-under-file", "finetune --base_model {base} --output_dir {plain_file}/run", "--output_dir"),
    # ina glue
    Case("glue-train-file-binary", "glue --train_file {binary_tsv} --validation_file {binary_tsv} --output_dir {out}", "--train_file"),
    Case("glue-train-file-missing", "glue --train_file {missing}.tsv --validation_file {missing}.tsv --output_dir {out}", "--train_file"),
    Case("glue-train-file-binary-json", "glue --train_file {binary_json} --validation_file {binary_json} --output_dir {out}", "--train_file"),
    Case("glue-train-file-only", "glue --train_file {plain_file} --output_dir {out}", "--validation_file"),
    Case("glue-task-unknown", "glue --task_name nosuch --output_dir {out}", "--task_name"),
    Case("glue-config-bad-yaml", "glue {bad_yaml} --output_dir {out}", "config"),
    Case("glue-config-binary", "glue {binary_yaml} --output_dir {out}", "config"),
    Case("glue-hub-model-offline", "glue --model_name_or_path bert-large-cased --output_dir {out}", "--model_name_or_path"),
    Case("glue-model-missing-folder", "glue --model_name_or_path {missing} --output_dir {out}", "--model_name_or_path"),
    Case("glue-inhibition-negative", "glue --inhibition -0.1 --output_dir {out}", "--inhibition"),
    Case("glue-activation-unknown", "glue --activation foo --output_dir {out}", "--activation"),
    Case("glue-max-seq-length-text", "glue --max_seq_length abc --output_dir {out}", "--max_seq_length"),
    Case("glue-dataset-unknown", "glue --dataset_name nosuch --output_dir {out}", "--dataset_name"),
    Case("glue-data-dir-is-file", "glue --data_dir {plain_file} --output_dir {out}", "--data_dir"),
    Case("glue-unknown-flag", "glue --nosuchflag 1 --output_dir {out}", "--nosuchflag"),
    Case("glue-output-dir-finished", "glue --output_dir {sweep_run}", "holds a finished run (result.json); nothing was changed. Pass --overwrite_output_dir"),
    Case("glue-output-dir-is-model", "glue --model_name_or_path {base} --output_dir {base} --overwrite_output_dir", "is --model_name_or_path"),
    Case("glue-output-dir-inside-model", "glue --model_name_or_path {base} --output_dir {base}/glue", "lies inside --model_name_or_path"),
    Case("glue-output-dir-holds-data", "glue --train_file {nest}/notes.txt --validation_file {nest}/notes.txt --output_dir {nest} --overwrite_output_dir", "holds --train_file"),
    Case("glue-output-dir-inside-checkpoint", "glue --resume_from_checkpoint {adapter} --output_dir {adapter}/run", "lies inside --resume_from_checkpoint"),
    Case("glue-output-dir-under-file", "glue --output_dir {plain_file}/run", "--output_dir"),
    # ina squad
    Case("squad-train-file-binary", "squad --train_file {binary_json} --validation_file {binary_json} --output_dir {out}", "--train_file"),
    Case("squad-train-file-missing", "squad --train_file {missing}.json --validation_file {missing}.json --output_dir {out}", "--train_file"),
    Case("squad-train-file-bad-json", "squad --train_file {bad_json_config} --validation_file {bad_json_config} --output_dir {out}", "--train_file"),
    Case("squad-n-best-text", "squad --n_best_size x --output_dir {out}", "--n_best_size"),
    Case("squad-model-missing", "squad --model_name_or_path {missing} --output_dir {out}", "--model_name_or_path"),
    Case("squad-lora-r-0", "squad --lora_r 0 --output_dir {out}", "--lora_r"),
    Case("squad-output-dir-finished", "squad --output_dir {sweep_run}", "holds a finished run (result.json); nothing was changed. Pass --overwrite_output_dir"),
    Case("squad-output-dir-is-model", "squad --model_name_or_path {base} --output_dir {base} --overwrite_output_dir", "is --model_name_or_path"),
    Case("squad-output-dir-holds-data", "squad --train_file {nest}/notes.txt --validation_file {nest}/notes.txt --output_dir {nest} --overwrite_output_dir", "holds --train_file"),
    Case("squad-output-dir-is-checkpoint", "squad --resume_from_checkpoint {adapter} --output_dir {adapter} --overwrite_output_dir", "is --resume_from_checkpoint"),
    # ina sweep
    Case("sweep-experiment-unknown", "sweep --experiment nosuch --output_dir {out}", "--experiment"),
    Case("sweep-inhibition-text", "sweep --inhibition a,b --output_dir {out}", "--inhibition"),
    Case("sweep-inhibition-out-of-range", "sweep --inhibition 1.5 --output_dir {out}", "--inhibition"),
    Case("sweep-seeds-text", "sweep --seeds x --output_dir {out}", "--seeds"),
    Case("sweep-lora-r-0", "sweep --lora_r 0 --output_dir {out}", "--lora_r"),
    Case("sweep-unknown-flag", "sweep --nosuchflag 1 --output_dir {out}", "--nosuchflag"),
    Case("sweep-experiment-flag-text", "sweep --max_seq_length abc --output_dir {out}", "--max_seq_length"),
    Case("sweep-activation-unknown", "sweep --activation foo --output_dir {out}", "--activation"),
    Case("sweep-trainer-flag-text", "sweep --num_train_epochs many --output_dir {out}", "--num_train_epochs"),
    Case("sweep-output-dir-is-file", "sweep --output_dir {plain_file}", "--output_dir"),
    # ina serve
    Case("serve-adapter-missing", "serve --base_model {base} --adapter a={missing}", "--adapter"),
    Case("serve-adapter-truncated", "serve --base_model {base} --adapter a={truncated}", "--adapter"),
    Case("serve-adapter-garbled", "serve --base_model {base} --adapter a={garbled}", "--adapter"),
    Case("serve-adapter-nan", "serve --base_model {base} --adapter a={nan}", "--adapter"),
    Case("serve-adapter-bad-config", "serve --base_model {base} --adapter a={bad_json}", "--adapter"),
    Case("serve-adapter-bad-spec", "serve --base_model {base} --adapter =", "--adapter"),
    Case("serve-port-text", "serve --base_model {base} --port abc", "--port"),
    Case("serve-port-out-of-range", "serve --base_model {base} --port 70000", "--port"),
    Case("serve-dtype-unknown", "serve --base_model {base} --dtype float8", "--dtype"),
    Case("serve-device-unknown", "serve --base_model {base} --device gpu9", "--device"),
    Case("serve-device-absent", "serve --base_model {base} --device cuda:99", "--device"),
    Case("serve-base-missing", "serve --base_model {missing}", "--base_model"),
    Case("serve-max-batch-size-0", "serve --base_model {base} --max_batch_size 0", "--max_batch_size"),
    Case("serve-batch-window-nan", "serve --base_model {base} --batch_window_ms nan", "--batch_window_ms"),
    Case("serve-batch-window-inf", "serve --base_model {base} --batch_window_ms inf", "--batch_window_ms"),
    Case("serve-batch-window-1e9", "serve --base_model {base} --batch_window_ms 1e9", "--batch_window_ms"),
    Case("serve-api-key-blank", "serve --base_model {base} --api_key {blank}", "--api_key"),
    Case("serve-token-budget-0", "serve --base_model {base} --token_budget 0", "--token_budget"),
    Case("serve-prefill-chunk-0", "serve --base_model {base} --prefill_chunk_tokens 0", "--prefill_chunk_tokens"),
    Case("serve-rows-per-request-text", "serve --base_model {base} --max_rows_per_request many",
         "--max_rows_per_request"),
    Case("serve-timeout-header-nan", "serve --base_model {base} --timeout_header nan", "--timeout_header"),
    Case("serve-max-connections-0", "serve --base_model {base} --max_connections 0", "--max_connections"),
    # ina viz
    Case("viz-attention-adapter-truncated", "viz attention --base_model {base} --adapter a={truncated} --text hi --out {out}", "--adapter"),
    Case("viz-attention-adapter-missing", "viz attention --base_model {base} --adapter a={missing} --text hi --out {out}", "--adapter"),
    Case("viz-inhibition-adapter-garbled", "viz inhibition --base_model {base} --adapter a={garbled} --text hi --out {out}", "--adapter"),
    Case("viz-inhibition-adapter-nan", "viz inhibition --base_model {base} --adapter a={nan} --text hi --out {out}", "--adapter"),
    Case("viz-inhibition-data-binary", "viz inhibition --base_model {base} --adapter a={adapter} --data {binary_txt} --out {out}", "--data"),
    Case("viz-inhibition-data-missing", "viz inhibition --base_model {base} --adapter a={adapter} --data {missing}.txt --out {out}", "--data"),
    Case("viz-inhibition-max-texts-0", "viz inhibition --base_model {base} --adapter a={adapter} --text hi --max_texts 0 --out {out}", "--max_texts"),
    Case("viz-attention-layers-text", "viz attention --base_model {base} --text hi --layers x --out {out}", "--layers"),
    Case("viz-attention-no-text", "viz attention --base_model {base} --out {out}", "--text"),
    Case("viz-attention-base-missing", "viz attention --base_model {missing} --text hi --out {out}", "--base_model"),
    Case("viz-attention-out-is-file", "viz attention --base_model {base} --text hi --out {plain_file}", "--out"),
    Case("viz-attention-dtype-unknown", "viz attention --base_model {base} --text hi --dtype float8 --out {out}", "--dtype"),
    Case("viz-attention-device-unknown", "viz attention --base_model {base} --text hi --device gpu9 --out {out}", "--device"),
    Case("viz-attention-device-absent", "viz attention --base_model {base} --text hi --device cuda:99 --out {out}", "--device"),
    Case("viz-inhibition-device-absent", "viz inhibition --base_model {base} --adapter a={adapter} --text hi --device cuda:99 --out {out}", "--device"),
    Case("viz-curves-missing", "viz curves {missing} --out {out}", "RUN_DIR"),
    Case("viz-curves-sweep-run", "viz curves {sweep_run} --out {out}", "trainer_state.json"),
    Case("viz-curves-bad-state", "viz curves {bad_state_run} --out {out}", "trainer_state.json"),
    Case("viz-unknown-subcommand", "viz nosuch", "nosuch"),
    # ina eval, ina export
    Case("eval-adapter-missing", "eval --base_model {base} --adapter a={missing} --output_dir {out}", "--adapter"),
    Case("eval-adapter-truncated", "eval --base_model {base} --adapter a={truncated} --output_dir {out}", "--adapter"),
    Case("eval-limit-text", "eval --base_model {base} --limit x --output_dir {out}", "--limit"),
    Case("eval-base-missing", "eval --base_model {missing} --output_dir {out}", "--base_model"),
    Case("eval-device-absent", "eval --base_model {base} --adapter a={adapter} --device cuda:99 --output_dir {out}", "--device"),
    Case("export-src-missing", "export lora {missing} {out}", "SRC"),
    Case("export-src-nan", "export lora {nan} {out} --base_model {base}", "adapter_model.safetensors"),
    Case("export-unknown-subcommand", "export nosuch", "nosuch"),
    Case("export-overwrite-dst-holds-src", "export lora {nest}/ad {nest} --overwrite", "DST"),
    Case("export-overwrite-dst-is-src", "export lora {adapter} {adapter} --overwrite", "DST"),
    Case("export-dst-inside-src", "export lora {adapter} {adapter}/lora", "DST"),
    Case("export-overwrite-not-an-export", "export lora {adapter} {empty_dir} --overwrite", "--overwrite"),
    Case("export-overwrite-dst-is-file", "export lora {adapter} {plain_file} --overwrite", "DST"),
    Case("export-dst-under-file", "export lora {adapter} {plain_file}/sub", "DST"),
    Case("export-device-absent", "export lora {adapter} {out} --base_model {base} --device cuda:99", "--device"),
    Case("export-overwrite-dst-link-to-parent", "export lora {nest}/ad {nest_link} --overwrite", "DST"),
    # ina bench
    Case("bench-model-missing", "bench --model {missing}", "--model"),
    Case("bench-model-is-file", "bench --model {plain_file}", "--model"),
    Case("bench-targets-match-nothing", "bench --model {base} --targets nosuch_proj --steps 1 --warmup 0", "--targets"),
    Case("bench-steps-0", "bench --steps 0", "--steps"),
    Case("bench-preset-unknown", "bench --preset huge", "--preset"),
    Case("bench-preset-and-model", "bench --preset tiny --model {base}", "--model"),
    Case("bench-json-is-folder", "bench --json {empty_dir}", "--json"),
    Case("bench-serve-port-out-of-range", "bench serve --tiny --port 70000", "--port"),
]
# fmt: on


def _weights(folder: Path) -> Path:
    return folder / "adapter_model.safetensors"


def _copy_adapter(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _build_fixtures(root: Path) -> dict[str, str]:
    """A tiny base model, a good adapter and every kind of damaged file the table uses."""
    import torch
    from safetensors.torch import load_file, save_file

    from ina.testing import save_demo_adapter, tiny_model, tiny_tokenizer

    base = root / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    good = root / "adapter"
    save_demo_adapter(base, good, 0.3, 1, ["q_proj", "v_proj"])
    paths: dict[str, Path] = {"base": base, "adapter": good, "missing": root / "no-such-path"}

    paths["nest"] = root / "nest"  # an adapter and a file of the user's side by side
    _copy_adapter(good, paths["nest"] / "ad")
    (paths["nest"] / "notes.txt").write_text("the user's own file\n")
    paths["nest_link"] = root / "nest-link"
    paths["nest_link"].symlink_to(paths["nest"], target_is_directory=True)
    paths["plain_file"] = root / "plain.txt"
    paths["plain_file"].write_text("not a folder\n")
    paths["empty_dir"] = root / "empty-folder"
    paths["empty_dir"].mkdir()

    def damaged(name: str) -> Path:
        paths[name] = _copy_adapter(good, root / name)
        return paths[name]

    (damaged("bad_json") / "adapter_config.json").write_text('{"peft_type": "INA", "r": ')
    (damaged("config_list") / "adapter_config.json").write_text("[1, 2]")
    (damaged("config_binary") / "adapter_config.json").write_bytes(bytes(range(256)))
    config = json.loads((good / "adapter_config.json").read_text())
    (damaged("wrong_peft_type") / "adapter_config.json").write_text(
        json.dumps({**config, "peft_type": "PREFIX_TUNING"})
    )
    (damaged("config_out_of_range") / "adapter_config.json").write_text(
        json.dumps({**config, "inhibition": 5})
    )
    data = _weights(good).read_bytes()
    _weights(damaged("truncated")).write_bytes(data[: len(data) // 2])
    _weights(damaged("garbled")).write_bytes(data[:8] + b"\xff" * 64 + data[72:])
    _weights(damaged("empty_weights")).write_bytes(b"")
    _weights(damaged("no_weights")).unlink()
    tensors = load_file(str(_weights(good)))
    name = next(key for key in tensors if "lora_B" in key)
    save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, str(_weights(damaged("nan"))))
    (damaged("checksum") / "training_summary.json").write_text(
        json.dumps({"adapter_sha256": {"adapter_model.safetensors": "0" * 64}})
    )

    noise = bytes(range(256)) * 8
    for key, suffix in (("binary_json", ".json"), ("binary_jsonl", ".jsonl"), ("binary_tsv", ".tsv"),
                        ("binary_txt", ".txt"), ("binary_yaml", ".yaml")):  # fmt: skip
        paths[key] = root / f"binary{suffix}"
        paths[key].write_bytes(noise)
    texts = {
        "bad_yaml": ("bad.yaml", "lora_r: [4\ninhibition: 0.3\n"),
        "yaml_list": ("list.yaml", "- lora_r\n- 4\n"),
        "yaml_bad_value": ("bad-value.yaml", "lora_r: zero\n"),
        "bad_json_config": ("bad.json", '{"lora_r": 4,'),
        "bad_template": ("template.json", '{"description": "no prompt fields"}'),
        "prompts_bad_line3": (
            "prompts.jsonl",
            '{"instruction": "one"}\n{"instruction": "two"}\n{"instruction": three}\n',
        ),
        "prompts_bad_array": ("prompts.json", '[{"instruction": "one"},\n {"instruction": }]'),
        "prompts_no_instruction": ("no-instruction.jsonl", '{"input": "context only"}\n'),
        "bad_records": (
            "records.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": "no answer"}\n',
        ),
    }
    for key, (file_name, text) in texts.items():
        paths[key] = root / file_name
        paths[key].write_text(text)
    paths["sweep_run"] = root / "sweep" / "runs" / "glue-sst2-inhibition0.3-seed1"
    paths["sweep_run"].mkdir(parents=True)
    (paths["sweep_run"] / "result.json").write_text('{"metrics": {"accuracy": 0.5}}')
    paths["bad_state_run"] = root / "bad-state-run"
    paths["bad_state_run"].mkdir()
    (paths["bad_state_run"] / "trainer_state.json").write_text("{not json")
    return {**{key: str(value) for key, value in paths.items()}, "blank": " \t "}  # blank: whitespace only


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path, dict]:
    root = tmp_path_factory.mktemp("cli-fuzz-fixtures")
    paths = _build_fixtures(root)
    return paths, root, _snapshot(root)


def _argv(case: Case, paths: dict[str, str]) -> list[str]:
    return [token.format(**paths) for token in case.argv.split()]


def test_table_covers_every_command() -> None:
    from ina.cli import COMMANDS

    commands = {case.argv.split()[0] for case in CASES}
    assert set(COMMANDS) <= commands
    assert len(CASES) >= 78
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    case: Case,
    fixtures: tuple[dict[str, str], Path, dict],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths, root, before = fixtures
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    paths = {**paths, "out": str(work / "out")}
    try:
        code = main(_argv(case, paths))
    except SystemExit as exit:  # argparse's way out
        code = exit.code
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code}; stderr: {err!r}"
    assert len(lines) == 1, f"stderr must be one line: {err!r}"
    assert case.names in lines[0], f"the error must name {case.names!r}: {lines[0]!r}"
    assert lines[0].startswith("ina"), lines[0]
    assert sorted(os.listdir(work)) == [], "a failed command wrote into the working folder"
    assert _snapshot(root) == before, "a failed command changed its input files"


def test_info_and_convert_on_sound_adapters(
    fixtures: tuple[dict[str, str], Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of the table: sound folders are read, described with their format, and converted."""
    paths, _, _ = fixtures
    authors = _copy_adapter(Path(paths["adapter"]), tmp_path / "authors")
    config = json.loads((authors / "adapter_config.json").read_text())
    config = {**config, "peft_type": "LORA", "lora_inhibition": config["inhibition"]}
    (authors / "adapter_config.json").write_text(json.dumps(config))
    formats = {}
    for name, folder in (("ina", paths["adapter"]), ("authors", str(authors))):
        capsys.readouterr()
        assert main(["info", folder]) == 0
        formats[name] = json.loads(capsys.readouterr().out)
    assert formats["ina"]["format"] == "ina" and formats["authors"]["format"] == "authors"
    assert formats["ina"]["inhibition"] == formats["authors"]["inhibition"] == 0.3
    assert main(["convert", str(authors), str(tmp_path / "converted")]) == 0
    assert main(["info", str(tmp_path / "converted")]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["format"] == "ina"


def _console(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("ina")
    inline = "import sys; from ina_cli import main; sys.exit(main())"
    command = [str(script)] if script.exists() else [sys.executable, "-c", inline]
    return subprocess.run([*command, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)


def _check_console(case: Case, paths: dict[str, str], cwd: Path) -> None:
    result = _console(_argv(case, paths), cwd)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (case.id, result.stderr)
    assert len(lines) == 1 and case.names in lines[0], (case.id, result.stderr)
    assert os.listdir(cwd) == []


def test_console_script_flag_error(tmp_path: Path) -> None:
    """A real `ina` process: a bad flag value is one line (no usage block), exit code 2, before any framework."""
    case = Case("console", "finetune --lora_r abc", "--lora_r")
    _check_console(case, {}, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["info-truncated-weights", "generate-adapter-nan", "finetune-config-bad-yaml"]
)
def test_console_script(name: str, fixtures: tuple[dict[str, str], Path, dict], tmp_path: Path) -> None:
    """Cases as real `ina` processes, where warnings and log lines reach stderr unfiltered (each imports torch)."""
    paths, _, _ = fixtures
    case = next(case for case in CASES if case.id == name)
    _check_console(case, {**paths, "out": str(tmp_path / "out")}, tmp_path)
