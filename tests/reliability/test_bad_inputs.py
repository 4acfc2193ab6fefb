"""A corpus of bad inputs (issue #8). Each one, fed to the CLI, must give exit code 2, a message
that names the problem, no Python traceback, and nothing left behind in the working folder (no
output table, run folder, checkpoint or temp file).

Most inputs are small files in `bad_inputs/`; those that are impractical to keep as files (invalid
UTF-8 bytes, a 4 MB line, 100k nested brackets, a truncated gzip, broken model folders) are made
by the `world` fixture. The CLI runs in-process for speed; `test_real_process_has_no_traceback`
runs a few through a real `alignscope` process to prove the top level is clean too.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignscope import run_files as rf
from alignscope.cli.main import main

BAD = Path(__file__).parent / "bad_inputs"
GOOD_PAIRS = [
    {"prompt": f"Is the {thing} fine? ({i})", "chosen": "yes it is good", "rejected": "no it is bad"}
    for i, thing in enumerate(["cat", "sky", "tree", "sea", "car", "sun", "book", "road"] * 2)
]


@dataclass(frozen=True)
class Case:
    name: str
    argv: str  # split on spaces after formatting: {bad} corpus folder, {w} generated inputs, {model} tiny model
    expect: str  # must appear in the message
    absent: str = ""  # must not appear in it (advice the message must not pass on)


def train(method: str, extra: str, model: str = "{model}") -> str:
    return f"train {method} model={model} output_dir=run progress=false {extra}"


DATA = [
    Case("malformed JSON line", train("dpo", "data={bad}/malformed_json.jsonl"), "line 2: malformed JSON"),
    Case("JSON array instead of object", train("dpo", "data={bad}/json_array_line.jsonl"), "is a JSON list, not an object"),
    Case("trailing garbage after JSON", train("dpo", "data={bad}/trailing_garbage.jsonl"), "malformed JSON (Extra data"),
    Case("wrong type: number as response", train("dpo", "data={bad}/wrong_type_chosen.jsonl"), "field 'chosen': expected text, got int"),
    Case("wrong type: object as prompt", train("dpo", "data={bad}/wrong_type_prompt.jsonl"), "expected a list of chat messages, got dict"),
    Case("wrong type: message content", train("dpo", "data={bad}/wrong_type_message_content.jsonl"), "message content is int"),
    Case("empty string", train("dpo", "data={bad}/empty_chosen.jsonl"), "field 'chosen': is empty"),
    Case("whitespace-only string", train("dpo", "data={bad}/whitespace_rejected.jsonl"), "is only whitespace"),
    Case("missing column", train("dpo", "data={bad}/missing_rejected_column.jsonl"), "needs column(s) rejected"),
    Case("missing field in one row", train("dpo", "data={bad}/missing_field_one_row.jsonl"), "line 3, field 'rejected': is missing"),
    Case("null field", train("dpo", "data={bad}/null_field.jsonl"), "field 'rejected': is missing"),
    Case("identical chosen and rejected", train("dpo", "data={bad}/identical_pair.jsonl"), "chosen is identical to rejected"),
    Case("pair differing only in whitespace", train("dpo", "data={bad}/whitespace_only_difference.jsonl"), "differ only in whitespace"),
    Case("lone UTF-16 surrogate escape", train("dpo", "data={bad}/lone_surrogate.jsonl"), "unpaired UTF-16 surrogate"),
    Case("5000-digit number", train("dpo", "data={bad}/huge_number.jsonl"), "unreadable JSON"),
    Case("NaN margin", train("dpo", "data={bad}/nan_margin.jsonl"), "field 'margin': is nan"),
    Case("ranking lengths mismatch", train("rank", "data={bad}/ranked_length_mismatch.jsonl"), "has 2 values for 3 completions"),
    Case("ranking of one completion", train("rank", "data={bad}/ranked_one_completion.jsonl"), "at least 2 completions"),
    Case("tied ranks", train("rank", "data={bad}/ranked_tied_ranks.jsonl"), "ranks have ties"),
    Case("scores not a list", train("rank", "data={bad}/ranked_scores_not_list.jsonl"), "expected a list of numbers, got str"),
    Case("KTO label not boolean", train("kto", "data={bad}/kto_bad_label.jsonl"), "label must be boolean"),
    Case("unknown chat role", train("dpo", "data={bad}/unknown_role.jsonl"), "unknown chat role 'wizard'"),
    Case("message without content", train("dpo", "data={bad}/message_without_content.jsonl"), "malformed message: no content"),
    Case("chat without assistant turn", train("sft", "data={bad}/sft_no_assistant_turn.jsonl"), "not an assistant message"),
    Case("unknown columns", train("dpo", "data={bad}/unknown_columns.jsonl"), "--map prompt=question"),
    Case("empty file", train("dpo", "data={bad}/empty.jsonl"), "the file is empty"),
    Case("empty dataset (blank lines)", train("dpo", "data={bad}/blank_lines.jsonl"), "the dataset has no records"),
    Case("JSON scalar", train("dpo", "data={bad}/json_scalar.json"), "expected a list of records, got a JSON int"),
    Case("JSON list of strings", train("dpo", "data={bad}/json_list_of_strings.json"), "the record is a JSON str"),
    Case("JSON object without records", train("dpo", "data={bad}/json_no_records_key.json"), "no list of records under 'train'"),
    Case("empty CSV cell", train("dpo", "data={bad}/empty_cell.csv"), "field 'chosen': is empty"),
    Case("corrupt Parquet", train("dpo", "data={bad}/corrupt.parquet"), "cannot read Parquet"),
    Case("unknown file type", train("dpo", "data={bad}/data.txt"), "unknown file type '.txt'"),
    Case("data file does not exist", train("dpo", "data={bad}/no_such_file.jsonl"), "the file does not exist"),
    Case("folder that is not a dataset", train("dpo", "data={w}/plain_folder"), "not a dataset saved with save_to_disk"),
    Case("invalid UTF-8 (JSONL)", train("dpo", "data={w}/latin1.jsonl"), "invalid UTF-8 (byte 0xe9"),
    Case("invalid UTF-8 (CSV)", train("dpo", "data={w}/latin1.csv"), "line 2: invalid UTF-8"),
    Case("4 MB line", train("dpo", "data={w}/huge_line.jsonl"), "line 2: malformed JSON"),
    Case("100k nested brackets", train("dpo", "data={w}/deep.jsonl"), "unreadable JSON (maximum recursion depth"),
    Case("truncated gzip", train("dpo", "data={w}/truncated.jsonl.gz"), "cannot decompress"),
    Case("data of the wrong kind for the method", train("kto", "data={w}/pairs.jsonl"), "KTO needs unpaired"),
]

CONFIG = [
    Case("mistyped config key (YAML)", train("dpo", "--config {bad}/typo_key.yaml data={w}/pairs.jsonl"), "unknown config key 'betta' (did you mean 'beta'?)"),
    Case("mistyped nested key (YAML)", train("dpo", "--config {bad}/nested_typo.yaml data={w}/pairs.jsonl"), "unknown config key 'lora.rr' (did you mean 'r'?)"),
    Case("mistyped key (override)", train("dpo", "data={w}/pairs.jsonl max_step=3"), "(did you mean 'max_steps'?)"),
    Case("mistyped RL key", "train rl prompts={w}/prompts.jsonl reward=lab:gold sample_per_prompt=4", "(did you mean 'samples_per_prompt'?)"),
    Case("mistyped loss type (YAML)", train("dpo", "--config {bad}/unknown_loss.yaml data={w}/pairs.jsonl"), "unknown loss type 'sigmoud' (did you mean 'sigmoid'?)"),
    Case("mistyped choice", train("dpo", "data={w}/pairs.jsonl nan_policy=skp"), "(did you mean 'skip'?)"),
    Case("mistyped format name", train("dpo", "data={w}/pairs.jsonl format=pairwize"), "unknown format 'pairwize' (did you mean 'pairwise'?)"),
    Case("mistyped RL algorithm", "train rl prompts={w}/prompts.jsonl reward=lab:gold algorithm=grpp", "(did you mean 'grpo'?)"),
    Case("YAML syntax error", train("dpo", "--config {bad}/bad_syntax.yaml data={w}/pairs.jsonl"), "is not valid YAML"),
    Case("YAML list, not mapping", train("dpo", "--config {bad}/top_level_list.yaml data={w}/pairs.jsonl"), "must hold a mapping"),
    Case("YAML python tag (unsafe)", train("dpo", "--config {bad}/python_tag.yaml data={w}/pairs.jsonl"), "could not determine a constructor"),
    Case("YAML not UTF-8", train("dpo", "--config {w}/latin1.yaml data={w}/pairs.jsonl"), "is not UTF-8 text"),
    Case("config is a folder", train("dpo", "--config {w}/plain_folder data={w}/pairs.jsonl"), "is not a file"),
    Case("config file does not exist", train("dpo", "--config {w}/none.yaml data={w}/pairs.jsonl"), "does not exist"),
    Case("wrong value type (YAML)", train("dpo", "--config {bad}/wrong_type.yaml data={w}/pairs.jsonl"), "'batch_size' must be an integer, got 'eight'"),
    Case("zero batch size", train("dpo", "data={w}/pairs.jsonl batch_size=0"), "'batch_size' must be >= 1, got 0"),
    Case("negative batch size", train("dpo", "data={w}/pairs.jsonl batch_size=-4"), "'batch_size' must be >= 1, got -4"),
    Case("zero gradient accumulation", train("sft", "data={w}/pairs.jsonl grad_accum=0"), "'grad_accum' must be >= 1"),
    Case("negative learning rate", train("dpo", "data={w}/pairs.jsonl lr=-1e-5"), "'lr' must be in (0, 1]"),
    Case("non-numeric learning rate", train("dpo", "data={w}/pairs.jsonl lr=fast"), "'lr' must be a number, got 'fast'"),
    Case("zero RL prompts per step", "train rl prompts={w}/prompts.jsonl reward=lab:gold prompts_per_step=0", "'prompts_per_step' must be >= 1"),
    Case("batch larger than the dataset", train("dpo", "data={w}/pairs.jsonl batch_size=64"), "fewer than one global batch"),
    Case("no loss terms", train("dpo", "data={w}/pairs.jsonl loss=[]"), "no loss terms given"),
    Case("no data given", train("dpo", ""), "no training data given"),
    Case("override without =", train("dpo", "data={w}/pairs.jsonl lr"), "is not of the form key=value"),
    Case("override with bad YAML", train("dpo", "data={w}/pairs.jsonl loss=[sigmoid,"), "the value is not valid YAML"),
    Case("override with empty key", train("dpo", "data={w}/pairs.jsonl =3"), "has an empty key"),
    Case("override of a sub-key of a value", train("dpo", "data={w}/pairs.jsonl lr=1 lr.x=2"), "already set to a value"),
    Case("GRPO with one sample per prompt", "train rl prompts={w}/prompts.jsonl reward=lab:gold algorithm=grpo samples_per_prompt=1", "samples_per_prompt >= 2"),
]

MODEL = [
    Case("model path does not exist", train("dpo", "data={w}/pairs.jsonl", model="{w}/no/such/model"), "does not exist"),
    Case("reference model does not exist", train("dpo", "data={w}/pairs.jsonl ref_model=/no/such/ref"), "model path '/no/such/ref' does not exist"),
    Case("model folder without weights", train("dpo", "data={w}/pairs.jsonl", model="{w}/no_weights"), "no file named model.safetensors"),
    Case("model weights truncated", train("dpo", "data={w}/pairs.jsonl", model="{w}/corrupt_weights"), "corrupt or truncated"),
    Case("empty model folder", train("dpo", "data={w}/pairs.jsonl", model="{w}/plain_folder"), "cannot load"),
    Case("tokenizer without pad or EOS token", train("dpo", "data={w}/pairs.jsonl", model="{w}/no_eos"), "the tokenizer has no EOS token"),
    Case("sequences longer than the model's positions", train("sft", "data={w}/pairs.jsonl", model="{w}/gpt2_8pos"), "longer than the model's 8 positions"),
    Case("audit: sequences longer than the positions", "audit data --model {w}/gpt2_8pos --data {w}/pairs.jsonl --out ches.csv", "longer than the model's 8 positions"),
    Case("output folder is a file", train("dpo", "data={w}/pairs.jsonl output_dir={w}/a_file"), "output_dir '{w}/a_file' is a file, not a folder"),
    Case("RL output folder is a file", "train rl prompts={w}/prompts.jsonl reward=lab:gold output_dir={w}/a_file", "is a file, not a folder"),
    Case("output path under a file", "audit data --model {model} --data {w}/pairs.jsonl --out {w}/a_file/ches.csv", "cannot be written (no permission, or a parent is a file)"),
    Case("reward module does not exist", "train rl prompts={w}/prompts.jsonl reward=no_such_module:fn model={model}", "cannot import 'no_such_module'"),
    Case("reward file with a syntax error", "train rl prompts={w}/prompts.jsonl reward={w}/bad_reward.py:reward model={model}", "has a syntax error"),
    Case("reward neither folder nor function", "train rl prompts={w}/prompts.jsonl reward=gibberish model={model}", "neither a folder nor module:function"),
    Case("reward folder that is not a reward model", "train rl prompts={w}/prompts.jsonl reward={model} model={model}", "is not a reward model folder"),
    Case("RL prompts: empty dataset", "train rl prompts={bad}/blank_lines.jsonl reward=lab:gold model={model}", "the dataset has no records"),
]

CLI = [
    Case("unknown training method", "train dpx data=x.jsonl", "invalid choice: 'dpx'"),
    Case("unknown option", "data inspect {w}/pairs.jsonl --bogus", "unrecognized arguments: --bogus"),
    Case("inspect: zero limit", "data inspect {w}/pairs.jsonl --limit 0", "argument --limit: must be >= 1, got 0"),
    Case("inspect: empty file", "data inspect {bad}/empty.jsonl", "the file is empty"),
    Case("inspect: tokenizer does not exist", "data inspect {w}/pairs.jsonl --tokenizer /no/such/tokenizer", "does not exist"),
    Case("audit: filter without a number", "audit data --model {model} --data {w}/pairs.jsonl --out ches.csv --filter drop:abc", "has no number"),
    Case("audit: unknown filter kind", "audit data --model {model} --data {w}/pairs.jsonl --out ches.csv --filter dorp:0.1", "(did you mean 'drop'?)"),
    Case("audit: filter fraction above 1", "audit data --model {model} --data {w}/pairs.jsonl --out ches.csv --filter drop:5", "needs a fraction in [0, 1]"),
    Case("audit: --map without =", "audit data --model {model} --data {w}/pairs.jsonl --out ches.csv --map chosen", "is not NEW=OLD"),
    Case("audit: --map of a missing column", "audit data --model {model} --data {w}/pairs.jsonl --out ches.csv --map chosen=answer", "the data has no column 'answer'"),
    Case("audit: bad --on-error", "audit data --model {model} --data {w}/pairs.jsonl --on-error skp", "invalid choice: 'skp'"),
    Case("report: run folder does not exist", "report {w}/no_such_run", "does not exist"),
    Case("best-of-n: zero prompts", "bon --policy {model} --prompts {w}/prompts.jsonl --reward lab:gold --limit 0 --out best.jsonl", "argument --limit: must be >= 1, got 0"),
    Case("best-of-n: zero samples", "bon --policy {model} --prompts {w}/prompts.jsonl --reward lab:gold --n 0 --out best.jsonl", "argument --n/--samples-per-prompt: must be >= 1, got 0"),
    Case("select-prompts: zero keep", "select-prompts --policy {model} --prompts {w}/prompts.jsonl --reward lab:gold --keep 0 --out sel.jsonl", "argument --keep: must be > 0, got 0"),
    Case("compare-rm: pairs do not exist", "compare-rm --policy {model} --ref {model} --rm lab:gold --pairs {w}/none.jsonl", "the file does not exist"),
    Case("demo: unknown size", "demo --size huge", "invalid choice: 'huge'"),
]

# The second corpus (issue #21): rows misread or lost, settings out of range, run folders with an
# owner, outputs checked before any model call, did-you-mean over every name.
def bon(extra: str, prompts: str = "{w}/prompts.jsonl") -> str:
    return f"bon --policy {{model}} --prompts {prompts} --reward lab:gold --out best.jsonl {extra}"


def select(extra: str, out: str = "sel.jsonl") -> str:
    return f"select-prompts --policy {{model}} --prompts {{w}}/prompts.jsonl --reward lab:gold --out {out} {extra}"


def rl(extra: str) -> str:
    return f"train rl prompts={{w}}/prompts.jsonl reward=lab:gold model={{model}} output_dir=run progress=false {extra}"


READERS = [
    Case("JSONL: duplicated key", train("dpo", "data={w}/dup_key.jsonl"), "line 2: the key 'chosen' appears twice in the object"),
    Case("JSONL: duplicated nested key", train("dpo", "data={w}/dup_nested_key.jsonl"), "the key 'role' appears twice"),
    Case("JSON: duplicated key in a record", train("dpo", "data={w}/dup_key.json"), "line 3: the key 'rejected' appears twice in the record"),
    Case("JSON: duplicated top-level key", train("dpo", "data={w}/dup_top_key.json"), "the key 'train' appears twice in the top-level object"),
    Case("CSV: unclosed quote merging rows", train("dpo", "data={w}/unclosed_quote.csv"), "line 3: a quoted cell opens on this row and is never closed"),
    Case("CSV: stray quote inside a cell", train("dpo", "data={w}/stray_quote.csv"), "line 2: malformed CSV"),
    Case("CSV: row with an extra cell", train("dpo", "data={w}/extra_cell.csv"), "line 3: the row has 4 cells, the header has 3"),
    Case("CSV: row with a missing cell", train("dpo", "data={w}/missing_cell.csv"), "line 2: the row has 2 cells, the header has 3"),
    Case("gzip: corrupt stream", train("dpo", "data={w}/corrupt_stream.jsonl.gz"), "cannot decompress"),
    Case("gzip: not gzip at all", train("dpo", "data={w}/not_gzip.jsonl.gz"), "cannot decompress"),
    Case("gzip: corrupt CSV stream", train("dpo", "data={w}/corrupt_stream.csv.gz"), "cannot decompress"),
    Case("400-digit integer margin", train("dpo", "data={w}/huge_int_margin.jsonl"), "field 'margin': is an integer of 400 digits"),
    Case("400-digit integer score", train("rank", "data={w}/huge_int_score.jsonl"), "is an integer of 400 digits"),
    Case("ShareGPT: lone surrogate in system", train("dpo", "data={w}/sharegpt_surrogate_system.jsonl"), "field 'system': holds an unpaired UTF-16 surrogate"),
    Case("ShareGPT: system not text", train("dpo", "data={w}/sharegpt_int_system.jsonl"), "field 'system': expected text, got int"),
    Case("map value is a list (YAML)", train("dpo", "--config {w}/map_list.yaml data={w}/pairs.jsonl"), "map entry 'chosen': ['a', 'b'] is not a column name"),
    Case("map value is a list (override)", train("dpo", "data={w}/pairs.jsonl map.chosen=[a,b]"), "is not a column name mapped to a column name"),
    Case("map value is a number", train("dpo", "data={w}/pairs.jsonl map.chosen=3"), "map entry 'chosen': 3"),
]

SETTINGS = [
    Case("YAML integer key", train("dpo", "--config {w}/int_key.yaml data={w}/pairs.jsonl"), "key 1 (a int) under 'the top level' is not a name"),
    Case("YAML integer nested key", train("dpo", "--config {w}/int_nested_key.yaml data={w}/pairs.jsonl"), "key 8 (a int) under 'lora' is not a name"),
    Case("YAML alias loop (mapping)", train("dpo", "--config {w}/alias_loop.yaml data={w}/pairs.jsonl"), "'map.x' contains itself through a YAML alias"),
    Case("YAML alias loop (list)", train("dpo", "--config {w}/alias_loop_list.yaml data={w}/pairs.jsonl"), "'loss.0' contains itself through a YAML alias"),
    Case("YAML alias bomb", train("dpo", "--config {w}/alias_bomb.yaml data={w}/pairs.jsonl"), "expands to more than 100,000 values"),
    Case("negative max_grad_norm", train("dpo", "data={w}/pairs.jsonl max_grad_norm=-1"), "'max_grad_norm' must be > 0, got -1"),
    Case("negative weight decay", train("dpo", "data={w}/pairs.jsonl weight_decay=-1"), "'weight_decay' must be in [0, 1], got -1"),
    Case("negative seed", train("dpo", "data={w}/pairs.jsonl seed=-1"), "'seed' must be in [0, "),
    Case("NaN learning rate", train("dpo", "data={w}/pairs.jsonl lr=nan"), "'lr' must be a finite number, got nan"),
    Case("LoRA rank 0", train("dpo", "data={w}/pairs.jsonl lora.r=0"), "'lora.r' must be in [1, 4096], got 0"),
    Case("RL: negative kl_coef", rl("kl_coef=-0.1"), "'kl_coef' must be >= 0, got -0.1"),
    Case("RL: negative value_lr", rl("algorithm=ppo value_lr=-1"), "'value_lr' must be in (0, 1], got -1"),
    Case("RL: epsilon above 1", rl("epsilon=1.5"), "'epsilon' must be in (0, 1), got 1.5"),
    Case("RL: gae_lambda above 1", rl("gae_lambda=1.5"), "'gae_lambda' must be in [0, 1], got 1.5"),
    Case("RL: zero temperature", rl("temperature=0"), "'temperature' must be > 0, got 0"),
    Case("did you mean: bata", train("dpo", "data={w}/pairs.jsonl bata=0.1"), "unknown config key 'bata' (did you mean 'beta'?)"),
    Case("did you mean: seeds", train("dpo", "data={w}/pairs.jsonl seeds=1"), "(did you mean 'seed'?)"),
    Case("did you mean: transposed letters", train("dpo", "data={w}/pairs.jsonl nan_policy=stpo"), "(did you mean 'stop'?)"),
]

FLAGS = [
    Case("bon: negative limit", bon("--limit -1"), "argument --limit: must be >= 1, got -1"),
    Case("bon: zero temperature", bon("--temperature 0"), "argument --temperature: must be > 0, got 0"),
    Case("bon: NaN temperature", bon("--temperature nan"), "argument --temperature: must be a finite number, got 'nan'"),
    Case("bon: zero new tokens", bon("--max-new-tokens 0"), "argument --max-new-tokens: must be >= 1, got 0"),
    Case("bon: non-integer n", bon("--n abc"), "argument --n/--samples-per-prompt: must be an integer, got 'abc'"),
    Case("bon: negative seed", bon("--seed -3"), "argument --seed: must be >= 0, got -3"),
    Case("select-prompts: one sample per prompt", select("--n 1"), "--n 1: a reward variance needs at least 2 samples per prompt"),
    Case("select-prompts: negative keep", select("--keep -1"), "argument --keep: must be > 0, got -1"),
    Case("inspect: negative limit", "data inspect {w}/pairs.jsonl --limit -1", "argument --limit: must be >= 1, got -1"),
    Case("did you mean: --polcy", "bon --polcy {model} --prompts {w}/prompts.jsonl --reward lab:gold --out best.jsonl", "--polcy is not an option (did you mean '--policy'?)"),
    Case("did you mean: --limt", "data inspect {w}/pairs.jsonl --limt 3", "--limt is not an option (did you mean '--limit'?)"),
    Case("did you mean: --resme", train("dpo", "data={w}/pairs.jsonl --resme"), "(did you mean '--resume'?)"),
    Case("did you mean: train method", "train dpx data=x.jsonl", "(did you mean 'dpo'?)"),
    Case("did you mean: --size choice", "demo --size tiyn", "(did you mean 'tiny'?)"),
    Case("did you mean: --on-error choice", "audit data --model {model} --data {w}/pairs.jsonl --on-error skp", "(did you mean 'skip'?)"),
]

OUTPUTS = [
    Case("bon: --out is a folder", bon("", ).replace("--out best.jsonl", "--out {w}/plain_folder"), "--out '{w}/plain_folder' is a folder, not a file"),
    Case("bon: --out under a file", bon("").replace("--out best.jsonl", "--out {w}/a_file/best.jsonl"), "lies under '{w}/a_file', which is a file"),
    Case("select-prompts: --out is a folder", select("", out="{w}/plain_folder"), "is a folder, not a file"),
    Case("select-prompts: variances file is a folder", select("", out="{w}/vardir/sel.jsonl"), "--out's .variances.json '{w}/vardir/sel.variances.json' is a folder"),
    Case("bon: bad reward found before the model loads", "bon --policy /no/such/model --prompts {w}/prompts.jsonl --reward no_such_module:fn --out best.jsonl", "cannot import 'no_such_module'"),
    Case("bon: bad gold found before the model loads", bon("--gold no_such_gold:fn").replace("{model}", "/no/such/model"), "cannot import 'no_such_gold'"),
    Case("bon: prompts do not exist, before the model loads", bon("", prompts="{w}/none.jsonl").replace("{model}", "/no/such/model"), "the file does not exist"),
]

RUN_FOLDERS = [
    Case("run folder locked by a running process", train("dpo", "data={w}/pairs.jsonl").replace("output_dir=run", "output_dir={w}/locked"), "output_dir '{w}/locked' is in use by process {ppid} on host {host}"),
    Case("run folder locked from another host", train("dpo", "data={w}/pairs.jsonl").replace("output_dir=run", "output_dir={w}/locked_elsewhere"), "is in use by process 1 on host gpu-node-7"),
    Case("finished run without --overwrite", train("dpo", "data={w}/pairs.jsonl").replace("output_dir=run", "output_dir={w}/finished"), "already holds a finished run (final/)"),
    Case("unfinished run without --resume", train("dpo", "data={w}/pairs.jsonl").replace("output_dir=run", "output_dir={w}/unfinished"), "already holds an unfinished run (newest checkpoint-4)"),
    Case("RL into a finished run", rl("").replace("output_dir=run", "output_dir={w}/finished"), "already holds a finished run"),
    Case("resume with a changed lr", train("dpo", "data={w}/pairs.jsonl lr=0.5 --resume").replace("output_dir=run", "output_dir={w}/resumable"), "lr: 5e-06 -> 0.5"),
    Case("resume with a changed method", train("sft", "data={w}/pairs.jsonl --resume").replace("output_dir=run", "output_dir={w}/resumable"), "method: 'dpo' -> 'sft'"),
    Case("resume with changed data", train("dpo", "data={w}/pairs2.jsonl --resume").replace("output_dir=run", "output_dir={w}/resumable"), "data: '{w}/pairs.jsonl' -> '{w}/pairs2.jsonl'"),
    Case("resume with an unreadable saved config", train("dpo", "data={w}/pairs.jsonl --resume").replace("output_dir=run", "output_dir={w}/bad_saved_config"), "is unreadable, so the resume cannot be checked"),
    Case("--resume with --overwrite", train("dpo", "data={w}/pairs.jsonl --resume --overwrite"), "--resume and --overwrite contradict each other"),
]

SECOND = READERS + SETTINGS + FLAGS + OUTPUTS + RUN_FOLDERS


# The gaps of the second corpus: every numeric option of the commands not checked above, user reward code that
# fails in each way, outputs of the remaining commands, readers that merged or misread, weights that do not fit
# their config or tokenizer, and did-you-mean over names spelled another framework's way.
def audit(extra: str) -> str:
    return f"audit data --model {{model}} --data {{w}}/pairs.jsonl --out ches.csv {extra}"


def audit_rm(extra: str, rm: str = "lab:gold") -> str:
    return f"audit rm --rm {rm} --policy {{model}} --prompts {{w}}/prompts.jsonl --n 2 --limit 2 --max-new-tokens 4 --out arm {extra}"


def compare(extra: str, rm: str = "lab:gold") -> str:
    return f"compare-rm --policy {{model}} --ref {{model}} --rm {rm} --pairs {{w}}/pairs.jsonl {extra}"


def bon_rw(fn: str, cmd: str = "bon") -> str:
    out = "best.jsonl" if cmd == "bon" else "sel.jsonl"
    return f"{cmd} --policy {{model}} --prompts {{w}}/prompts.jsonl --reward {{w}}/rewards_bad.py:{fn} --out {out} --n 2 --max-new-tokens 4"


RANGES = [
    Case("compare-rm: beta 0", compare("--beta 0"), "--beta must be positive, got 0.0"),
    Case("compare-rm: negative beta", compare("--beta -1"), "--beta must be positive, got -1.0"),
    Case("compare-rm: NaN beta", compare("--beta nan"), "--beta must be positive, got nan"),
    Case("compare-rm: zero batch size", compare("--beta 0.1 --batch-size 0"), "--batch-size must be at least 1, got 0"),
    Case("compare-rm: negative limit", compare("--beta 0.1 --limit -1"), "--limit must be at least 1, got -1"),
    Case("audit data: negative limit", audit("--limit -1"), "--limit must be at least 1, got -1"),
    Case("audit data: zero batch size", audit("--batch-size 0"), "--batch-size must be at least 1, got 0"),
    Case("audit data: max length 1", audit("--max-length 1"), "--max-length must be at least 2, got 1"),
    Case("audit rm: one sample per prompt", audit_rm("").replace("--n 2", "--n 1"), "--n must be at least 2, got 1"),
    Case("audit rm: NaN threshold", audit_rm("--threshold nan"), "--threshold must be at least 0, got nan"),
    Case("demo: negative seed", "demo --seed -1", "argument --seed: must be >= 0, got -1"),
    Case("DPO beta 0", train("dpo", "data={w}/pairs.jsonl beta=0"), "'beta' must be > 0, got 0"),
    Case("infinite learning rate", train("dpo", "data={w}/pairs.jsonl lr=inf"), "'lr' must be a finite number, got inf"),
    Case("warmup ratio 1", train("dpo", "data={w}/pairs.jsonl warmup_ratio=1"), "'warmup_ratio' must be in [0, 1), got 1"),
    Case("label smoothing 1", train("dpo", "data={w}/pairs.jsonl label_smoothing=1"), "'label_smoothing' must be in [0, 1)"),
    Case("eval fraction 1", train("dpo", "data={w}/pairs.jsonl eval_fraction=1"), "'eval_fraction' must be in [0, 1), got 1"),
    Case("keep_last 0", train("dpo", "data={w}/pairs.jsonl keep_last=0"), "'keep_last' must be >= 1, got 0"),
    Case("save_steps 0", train("dpo", "data={w}/pairs.jsonl save_steps=0"), "'save_steps' must be >= 1, got 0"),
    Case("max_length 0", train("sft", "data={w}/pairs.jsonl max_length=0"), "'max_length' must be >= 1, got 0"),
    Case("LoRA alpha 0", train("dpo", "data={w}/pairs.jsonl lora.alpha=0"), "'lora.alpha' must be >= 1, got 0"),
    Case("LoRA dropout 1", train("dpo", "data={w}/pairs.jsonl lora.dropout=1"), "'lora.dropout' must be in [0, 1), got 1"),
    Case("seed of 2^32", train("dpo", "data={w}/pairs.jsonl seed=4294967296"), "'seed' must be in [0, 4294967296), got 4294967296"),
    Case("RL: top_p 0", rl("top_p=0"), "'top_p' must be in (0, 1], got 0"),
    Case("RL: zero samples per prompt", rl("samples_per_prompt=0"), "'samples_per_prompt' must be >= 1, got 0"),
    Case("RL: negative max_new_tokens", rl("max_new_tokens=-1"), "'max_new_tokens' must be >= 1, got -1"),
    Case("RL: zero reward timeout", rl("reward_timeout=0"), "'reward_timeout' must be > 0, got 0"),
    Case("RL: negative entropy bonus", rl("entropy_coef=-0.01"), "'entropy_coef' must be >= 0, got -0.01"),
]

REWARD_CODE = [
    Case("RL: reward import fails (missing dependency)", rl("").replace("reward=lab:gold", "reward={w}/reward_needs_dep.py:score"),
         "raised ModuleNotFoundError: No module named 'alignscope_no_such_dep' at {w}/reward_needs_dep.py, line 2"),
    Case("RL: reward module raises at import", rl("").replace("reward=lab:gold", "reward={w}/reward_import_raises.py:score"),
         "importing the reward module of '{w}/reward_import_raises.py:score' raised RuntimeError: no API key"),
    Case("RL: reward of one argument", rl("").replace("reward=lab:gold", "reward={w}/rewards_bad.py:one_arg"),
         "is one_arg(responses), which cannot be called as fn(prompts, responses)"),
    Case("RL: reward with keyword-only arguments", rl("").replace("reward=lab:gold", "reward={w}/rewards_bad.py:kw_only"),
         "is kw_only(*, prompts, completions), which cannot be called"),
    Case("RL: reward of three required arguments", rl("").replace("reward=lab:gold", "reward={w}/rewards_bad.py:three"),
         "missing a required argument: 'answers'"),
    Case("RL: reward that is a class", rl("").replace("reward=lab:gold", "reward={w}/rewards_bad.py:NotAFunction"),
         "cannot be called as fn(prompts, responses)"),
    Case("bon: reward of one argument", bon_rw("one_arg"), "cannot be called as fn(prompts, responses)"),
    Case("bon: reward raises", bon_rw("raises"), "raised KeyError: 'score' on the response"),
    Case("bon: reward raises on one prompt", bon_rw("raises_on_sky"), "raised ValueError: no sky on the response"),
    Case("bon: reward returns text", bon_rw("strings"), "returned a str ('good') for the response"),
    Case("bon: reward returns NaN", bon_rw("nan"), "returned a non-finite value (nan) for the response"),
    Case("bon: reward returns too few values", bon_rw("too_few"), "returned 1 values for 32 responses (first prompt 'Is the cat fine? (0)')"),
    Case("select-prompts: reward raises", bon_rw("raises", "select-prompts"), "raised KeyError: 'score' on the response"),
    Case("audit rm: reward raises", audit_rm("", rm="{w}/rewards_bad.py:raises"), "raised KeyError: 'score' on the response"),
    Case("compare-rm: reward raises", compare("--beta 0.1", rm="{w}/rewards_bad.py:raises"), "raised KeyError: 'score' on the response 'yes it is good'"),
    Case("compare-rm: reward import fails", compare("--beta 0.1", rm="{w}/reward_needs_dep.py:score"), "pip install alignscope_no_such_dep"),
]

OUTPUTS_2 = [
    Case("demo: --out is a file", "demo --out {w}/a_file", "--out '{w}/a_file' is a file, not a folder"),
    Case("demo: --out holds other files", "demo --out {w}/precious", "holds files that the demo did not write"),
    Case("demo: --out under a file", "demo --out {w}/a_file/demo", "lies under '{w}/a_file', which is a file"),
    Case("audit data: --filtered-out is a folder", audit("--filter drop:0.1 --filtered-out {w}/plain_folder"), "--filtered-out {w}/plain_folder is a folder"),
    Case("audit data: --filtered-out without --filter", audit("--filtered-out kept.jsonl"), "--filtered-out was given without --filter"),
    Case("audit data: --out table is a folder", audit("").replace("--out ches.csv", "--out {w}/dir.csv"), "--out {w}/dir.csv is a folder"),
    Case("audit data: --out under a file", audit("").replace("--out ches.csv", "--out {w}/a_file/audit"), "cannot be written (no permission, or a parent is a file)"),
    Case("audit rm: --out is a file", audit_rm("").replace("--out arm", "--out {w}/a_file"), "--out {w}/a_file is a file, but a folder is needed"),
    Case("compare-rm: --out under a file", compare("--beta 0.1 --out {w}/a_file/c.json"), "cannot be written (no permission, or a parent is a file)"),
    Case("compare-rm: --out of another type", compare("--beta 0.1 --out result.txt"), "--out result.txt must end in .json"),
    Case("empty output_dir", train("dpo", "data={w}/pairs.jsonl").replace("output_dir=run", "output_dir="), "output_dir is empty"),
    Case("RL: empty output_dir", rl("").replace("output_dir=run", "output_dir="), "output_dir is empty"),
    Case("ref_cache_dir is a file", train("dpo", "data={w}/pairs.jsonl ref_cache_dir={w}/a_file"), "ref_cache_dir '{w}/a_file' is a file, not a folder"),
    Case("ref_cache_dir under a file", train("dpo", "data={w}/pairs.jsonl ref_cache_dir={w}/a_file/cache"),
         "ref_cache_dir '{w}/a_file/cache' lies under '{w}/a_file', which is a file"),
]

READERS_2 = [
    Case("CSV: column named twice in the header", train("dpo", "data={w}/dup_header.csv"), "line 1: the header names the column 'chosen' twice (columns 2 and 3)"),
    Case("gzip: trailing garbage", train("dpo", "data={w}/trailing_garbage.jsonl.gz"), "cannot decompress: Not a gzipped file"),
    Case("gzip: corrupt after many good rows", train("dpo", "data={w}/late_corrupt.jsonl.gz"), "cannot decompress"),
    Case("inspect: gzip corrupt after many good rows", "data inspect {w}/late_corrupt.jsonl.gz --tokenizer {model} --no-progress", "cannot decompress"),
    Case("CSV: header only", train("dpo", "data={w}/header_only.csv"), "the dataset has no records"),
    Case("JSON overflow to inf", train("dpo", "data={w}/inf_margin.jsonl"), "field 'margin': is inf"),
    Case("KTO label 2", train("kto", "data={w}/kto_label_2.jsonl"), "field 'label': label must be boolean, got 2"),
    Case("CSV: invalid UTF-8 after many good rows", train("dpo", "data={w}/late_latin1.csv"), "line 502: invalid UTF-8"),
    Case("CSV: unclosed quote after many good rows", train("dpo", "data={w}/late_unclosed.csv"), "line 402: a quoted cell opens on this row and is never closed"),
    Case("inspect: --map of a column no row has", "data inspect {w}/pairs.jsonl --map chosen=answer --no-progress", "--map chosen=answer: the data has no column 'answer'"),
]

WEIGHTS = [
    Case("weights of another shape than the config", train("dpo", "data={w}/pairs.jsonl", model="{w}/wrong_shape"),
         "do not match its config.json: 3 tensor(s) have another shape than config.json gives"),
    Case("weights missing tensors the config needs", train("dpo", "data={w}/pairs.jsonl", model="{w}/missing_tensors"),
         "3 tensor(s) the config needs are not in the weights"),
    Case("weights with tensors the config has no place for", train("dpo", "data={w}/pairs.jsonl", model="{w}/extra_tensors"),
         "1 tensor(s) in the weights have no place in the config (e.g. model.layers.5.mlp.up_proj.weight)"),
    Case("reference weights of another shape", train("dpo", "data={w}/pairs.jsonl ref_model={w}/wrong_shape"), "do not match its config.json"),
    Case("audit: weights of another shape", audit("").replace("{model}", "{w}/wrong_shape"), "do not match its config.json"),
    Case("tokenizer larger than the embedding (SFT)", train("sft", "data={w}/pairs.jsonl", model="{w}/small_vocab"),
         "is outside the model's embedding, which has 200 rows: the tokenizer (300 tokens) is larger"),
    Case("tokenizer larger than the embedding (bon)", bon("--n 2 --max-new-tokens 4").replace("{model}", "{w}/small_vocab"),
         "outside the model's embedding, which has 200 rows"),
    Case("tokenizer larger than the embedding (audit)", audit("").replace("{model}", "{w}/small_vocab"), "outside the model's embedding, which has 200 rows"),
    Case("pickle weights that would run code", train("dpo", "data={w}/pairs.jsonl", model="{w}/pickle_payload"),
         "which alignscope does not unpickle, since unpickling can run code (it refers to posix.system, which is not a tensor type)",
         absent="weights_only"),
    Case("pickle weights with an unknown class", train("dpo", "data={w}/pairs.jsonl", model="{w}/pickle_class"),
         "(it refers to argparse.Namespace, which is not a tensor type)", absent="allowlist"),
    Case("pickle weights truncated", train("dpo", "data={w}/pairs.jsonl", model="{w}/pickle_truncated"), "cannot read the weights of"),
]

NAMES = [
    Case("did you mean: RL max_steps", rl("max_steps=3"), "unknown config key 'max_steps' (did you mean 'steps'?)"),
    Case("did you mean: learning_rate", train("dpo", "data={w}/pairs.jsonl learning_rate=1e-5"), "unknown config key 'learning_rate' (did you mean 'lr'?)"),
    Case("did you mean: TRL's num_generations", rl("num_generations=4"), "(did you mean 'samples_per_prompt'?)"),
    Case("did you mean: gradient_accumulation_steps", train("sft", "data={w}/pairs.jsonl gradient_accumulation_steps=2"), "(did you mean 'grad_accum'?)"),
    Case("did you mean: --tokenzier", "data inspect {w}/pairs.jsonl --tokenzier x", "--tokenzier is not an option (did you mean '--tokenizer'?)"),
    Case("did you mean: inspect --format", "data inspect {w}/pairs.jsonl --format pairwize --no-progress", "unknown format 'pairwize' (did you mean 'pairwise'?)"),
    Case("did you mean: audit --on-error choice", "audit data --model {model} --data {w}/pairs.jsonl --on-error fial", "(did you mean 'fail'?)"),
]

THIRD = RANGES + REWARD_CODE + OUTPUTS_2 + READERS_2 + WEIGHTS + NAMES
CASES = DATA + CONFIG + MODEL + CLI + SECOND + THIRD


def _save_tiny(path: Path, tok, **kw) -> Path:
    from alignscope.models.tiny import tiny_llama

    tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2, seed=0, **kw).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Generated bad inputs and tiny local models (no network)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from alignscope.models.tiny import train_bpe_tokenizer

    w = tmp_path_factory.mktemp("world")
    texts = [r[k] for r in GOOD_PAIRS for k in ("prompt", "chosen", "rejected")]
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    model = _save_tiny(w / "model", tok)
    (w / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_PAIRS))
    (w / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in GOOD_PAIRS))
    (w / "plain_folder").mkdir()
    (w / "a_file").write_text("not a folder\n")
    (w / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9?", "chosen": "yes", "rejected": "no"}\n')
    (w / "latin1.csv").write_bytes(b"prompt,chosen,rejected\nna\xefve?,yes,no\n")
    (w / "latin1.yaml").write_bytes(b"beta: 0.1  # \xe9t\xe9\n")
    good = json.dumps(GOOD_PAIRS[0])
    (w / "huge_line.jsonl").write_text(good + "\n" + '{"prompt": "' + "x" * 4_000_000 + "\n")
    (w / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (w / "truncated.jsonl.gz").write_bytes(gzip.compress((w / "pairs.jsonl").read_bytes())[:40])
    (w / "bad_reward.py").write_text("def reward(prompts, responses):\n    return [1.0] * len(responses)\n\ndef broken(:\n")
    shutil.copytree(model, w / "no_weights")
    (w / "no_weights" / "model.safetensors").unlink()
    shutil.copytree(model, w / "corrupt_weights")
    weights = (w / "corrupt_weights" / "model.safetensors").read_bytes()
    (w / "corrupt_weights" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copytree(model, w / "no_eos")
    cfg = json.loads((w / "no_eos" / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    cfg.pop("eos_token", None)
    (w / "no_eos" / "tokenizer_config.json").write_text(json.dumps(cfg))
    gpt2 = GPT2Config(vocab_size=len(tok), n_positions=8, n_embd=16, n_layer=1, n_head=2,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(gpt2).save_pretrained(w / "gpt2_8pos")
    AutoTokenizer.from_pretrained(model).save_pretrained(w / "gpt2_8pos")
    _second_corpus(w, model)
    _third_corpus(w, model)
    return {"bad": str(BAD), "w": str(w), "model": str(model), "ppid": str(os.getppid()), "host": socket.gethostname()}


def _second_corpus(w: Path, model: Path) -> None:
    """The inputs of issue #21's cases: files that parse but would be misread, and run folders in every state."""
    from dataclasses import asdict

    from alignscope.options import build_config
    from alignscope.training.config import TrainConfig

    good = json.dumps(GOOD_PAIRS[0])
    (w / "pairs2.jsonl").write_text((w / "pairs.jsonl").read_text())
    (w / "dup_key.jsonl").write_text(good + '\n{"prompt": "q", "chosen": "a", "chosen": "b", "rejected": "c"}\n')
    (w / "dup_nested_key.jsonl").write_text('{"prompt": [{"role": "user", "role": "system", "content": "hi"}], "chosen": "a", "rejected": "b"}\n')
    (w / "dup_key.json").write_text('[\n {"prompt": "p1", "chosen": "a", "rejected": "b"},\n {"prompt": "p2", "chosen": "a", "rejected": "b", "rejected": "c"}\n]\n')
    (w / "dup_top_key.json").write_text('{"train": [' + good + '], "train": [' + good + "]}\n")
    (w / "unclosed_quote.csv").write_text('prompt,chosen,rejected\nq1,yes,no\nq2,"yes,no\nq3,yes,no\n')
    (w / "stray_quote.csv").write_text('prompt,chosen,rejected\nq1,"ye"s,no\n')
    (w / "extra_cell.csv").write_text("prompt,chosen,rejected\nq1,yes,no\nq2,yes,no,maybe\n")
    (w / "missing_cell.csv").write_text("prompt,chosen,rejected\nq1,yes\nq2,yes,no\n")
    for name, data in (("corrupt_stream.jsonl.gz", (w / "pairs.jsonl").read_bytes()), ("corrupt_stream.csv.gz", b"prompt,chosen,rejected\n" + b"q,yes,no\n" * 50)):
        z = bytearray(gzip.compress(data))
        z[12:40] = bytes(range(200, 228))  # inside the deflate stream: the header is valid, the data is not
        (w / name).write_bytes(bytes(z))
    (w / "not_gzip.jsonl.gz").write_text(good + "\n")
    (w / "huge_int_margin.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": ' + "9" * 400 + "}\n")
    (w / "huge_int_score.jsonl").write_text('{"prompt": "q", "completions": ["a", "b"], "scores": [' + "9" * 400 + ", 1]}\n")
    share = {"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": "yes"},
             "rejected": {"from": "gpt", "value": "no"}}
    (w / "sharegpt_surrogate_system.jsonl").write_text(json.dumps({**share, "system": "be kind"}).replace("be kind", "be \\ud800kind") + "\n")
    (w / "sharegpt_int_system.jsonl").write_text(json.dumps({**share, "system": 7}) + "\n")
    (w / "map_list.yaml").write_text("map:\n  chosen: [a, b]\n")
    (w / "int_key.yaml").write_text("1: 2\nbeta: 0.1\n")
    (w / "int_nested_key.yaml").write_text("lora:\n  8: 3\n")
    (w / "alias_loop.yaml").write_text("map: &a\n  x: *a\n")
    (w / "alias_loop_list.yaml").write_text("loss: &l [*l]\n")
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    (w / "alias_bomb.yaml").write_text("map:\n" + "".join(f"  {line}\n" for line in bomb))
    (w / "vardir").mkdir()
    (w / "vardir" / "sel.variances.json").mkdir()
    saved = asdict(build_config(TrainConfig, {"method": "dpo", "model": str(model), "output_dir": str(w / "resumable"),
                                              "progress": False, "data": str(w / "pairs.jsonl")}))
    for name in ("locked", "locked_elsewhere", "finished", "unfinished", "resumable", "bad_saved_config"):
        (w / name).mkdir()
        (w / name / rf.CONFIG).write_text(json.dumps(saved, default=str))
    (w / "locked" / rf.LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}))
    (w / "locked_elsewhere" / rf.LOCK).write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "started": "earlier"}))
    (w / "finished" / "final").mkdir()
    for step in (2, 4):
        (w / "unfinished" / f"checkpoint-{step}").mkdir()
    (w / "bad_saved_config" / rf.CONFIG).write_text("{not json")


REWARDS_BAD = """
import math


def one_arg(responses):
    return [1.0] * len(responses)


def kw_only(*, prompts, completions):
    return [1.0] * len(completions)


def three(prompts, responses, answers):
    return [1.0] * len(responses)


class NotAFunction:
    def __init__(self):
        pass


def raises(prompts, responses):
    raise KeyError("score")


def raises_on_sky(prompts, responses):
    if any("sky" in p for p in prompts):
        raise ValueError("no sky")
    return [1.0] * len(responses)


def strings(prompts, responses):
    return ["good"] * len(responses)


def nan(prompts, responses):
    return [math.nan] * len(responses)


def too_few(prompts, responses):
    return [1.0]
"""


class _Payload:
    """Unpickling this would run `touch`: the weights file of a malicious model folder."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _third_corpus(w: Path, model: Path) -> None:
    """Issue #21's remaining inputs: weights that do not fit their config or tokenizer, pickled weights, reward code
    that fails in each way, files whose fault comes after many good rows, and a folder the demo must not replace."""
    import argparse

    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))

    def variant(name: str, state: dict | None = None, **config) -> Path:
        folder = w / name
        shutil.copytree(model, folder)
        if config:
            cfg = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**cfg, **config}))
        if state is not None:
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    cfg = json.loads((model / "config.json").read_text())
    variant("wrong_shape", intermediate_size=2 * cfg["intermediate_size"])
    variant("missing_tensors", {k: v for k, v in tensors.items() if ".mlp." not in k})
    variant("extra_tensors", {**tensors, "model.layers.5.mlp.up_proj.weight": torch.zeros(3, 3)})
    variant("small_vocab", {k: (v[:200].contiguous() if v.shape[0] == cfg["vocab_size"] else v) for k, v in tensors.items()},
            vocab_size=200)
    for name, extra in (("pickle_payload", {"x": _Payload(str(w / "pwned"))}), ("pickle_class", {"x": argparse.Namespace(a=1)})):
        folder = variant(name)
        (folder / "model.safetensors").unlink()
        torch.save({**tensors, **extra}, folder / "pytorch_model.bin")
    folder = variant("pickle_truncated")
    (folder / "model.safetensors").unlink()
    torch.save(dict(tensors), folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])

    (w / "rewards_bad.py").write_text(REWARDS_BAD)
    (w / "reward_needs_dep.py").write_text("import math\nimport alignscope_no_such_dep\n\n\ndef score(prompts, responses):\n    return [0.0] * len(responses)\n")
    (w / "reward_import_raises.py").write_text("raise RuntimeError('no API key')\n\n\ndef score(prompts, responses):\n    return [0.0] * len(responses)\n")
    (w / "precious").mkdir()
    (w / "precious" / "thesis.tex").write_text("years of work\n")
    (w / "dir.csv").mkdir()

    good = json.dumps(GOOD_PAIRS[0]) + "\n"
    (w / "dup_header.csv").write_text("prompt,chosen,chosen,rejected\nq1,yes,maybe,no\n")
    (w / "header_only.csv").write_text("prompt,chosen,rejected\n")
    (w / "trailing_garbage.jsonl.gz").write_bytes(gzip.compress(good.encode()) + b"garbage!")
    big = "".join(json.dumps({**GOOD_PAIRS[i % 16], "prompt": f"question {i}?"}) + "\n" for i in range(3000)).encode()
    z = bytearray(gzip.compress(big))
    z[len(z) - 200 : len(z) - 150] = bytes(range(50))  # near the end of the stream: thousands of rows read well first
    (w / "late_corrupt.jsonl.gz").write_bytes(bytes(z))
    (w / "inf_margin.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1e400}\n')
    (w / "kto_label_2.jsonl").write_text('{"prompt": "q", "completion": "a", "label": 2}\n')
    rows = "".join(f"q{i},yes,no\n" for i in range(500))
    (w / "late_latin1.csv").write_bytes(("prompt,chosen,rejected\n" + rows).encode() + b"caf\xe9,yes,no\n")
    (w / "late_unclosed.csv").write_text("prompt,chosen,rejected\n" + rows[: rows.index("q400,")] + 'q400,"yes,no\nq401,yes,no\n')


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out + err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)
    files = {p.name for p in BAD.iterdir()}
    used = {Path(part).name for c in CASES for part in c.argv.split() if "{bad}/" in part}
    assert files <= used, f"corpus files no case uses: {sorted(files - used)}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, rejects, --out) would land here
    code, text = run_cli(case.argv.format(**world).split(), capsys)
    assert code == 2, text[-2000:]
    assert case.expect.format(**world) in text, text[-2000:]
    assert not case.absent or case.absent not in text, text[-2000:]
    assert "Traceback" not in text
    assert len(text) < 20_000, "the message must not echo the bad input"
    assert files_under(tmp_path) == [], "a failed command must leave nothing behind"
    assert not [f for f in files_under(Path(world["w"])) if f.endswith(".tmp")]


def test_refused_inputs_ran_no_code_and_kept_every_file(world):
    """After every case: the pickled weights' payload never ran, and the folder the demo refused is untouched."""
    assert not (Path(world["w"]) / "pwned").exists()
    assert (Path(world["w"]) / "precious" / "thesis.tex").read_text() == "years of work\n"


def test_every_row_rejected_names_its_rejects_file(world, tmp_path, monkeypatch, capsys):
    """The one bad input that leaves a file: the complete rejects file, which the message names."""
    monkeypatch.chdir(tmp_path)
    code, text = run_cli(train("dpo", "data={bad}/identical_pair.jsonl on_error=skip").format(**world).split(), capsys)
    assert code == 2 and "no valid records" in text and "Traceback" not in text
    rejects = tmp_path / "run" / "rejects-identical_pair.jsonl"
    assert str(rejects.relative_to(tmp_path)) in text
    assert [json.loads(line)["kind"] for line in rejects.read_text().splitlines()] == ["identical"]
    assert files_under(tmp_path) == ["run", str(rejects.relative_to(tmp_path))]


def test_handled_not_refused(world, tmp_path, monkeypatch, capsys):
    """A tokenizer without a pad token pads with EOS, and sequences longer than max_length are
    truncated and counted: both train, neither is an error."""
    monkeypatch.chdir(tmp_path)
    no_pad = Path(world["w"]) / "no_pad"
    shutil.copytree(world["model"], no_pad, dirs_exist_ok=True)
    cfg = json.loads((no_pad / "tokenizer_config.json").read_text())
    cfg.pop("pad_token")
    (no_pad / "tokenizer_config.json").write_text(json.dumps(cfg))
    argv = train("sft", "data={w}/pairs.jsonl batch_size=4 max_steps=1 max_length=4 max_prompt_length=4", model=str(no_pad))
    code, text = run_cli(argv.format(**world).split(), capsys)
    assert code == 0, text[-2000:]
    cut = re.search(r"(\d+) prompts truncated .* (\d+) responses truncated", text)
    assert cut and int(cut[1]) > 0 and int(cut[2]) > 0, text[-2000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


REAL_PROCESS = ["malformed JSON line", "output path under a file", "pickle weights that would run code"]  # a user error, a file-system error, a model error


@pytest.mark.slow
def test_real_process_has_no_traceback(world, tmp_path):
    """The `alignscope` console script itself (not main() in this process) prints no traceback."""
    script = Path(sys.executable).with_name("alignscope")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "alignscope.cli.main"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cases = [c for c in CASES if c.name in REAL_PROCESS]
    procs = []
    for i, case in enumerate(cases):  # started together: each spends most of its time importing
        cwd = tmp_path / str(i)
        cwd.mkdir()
        procs.append((case, cwd, subprocess.Popen(cmd + case.argv.format(**world).split(), cwd=cwd, env=env,
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for case, cwd, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-2000:]
        assert case.expect.format(**world) in err and "Traceback" not in out + err
        assert "alignscope: error:" in err
        assert files_under(cwd) == []
