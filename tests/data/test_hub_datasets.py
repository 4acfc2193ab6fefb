"""Hub datasets named `hf:NAME[:SUBSET][@SPLIT]` wherever a data path goes, served offline from the
`datasets` cache.

The cache is built the way a Hub download leaves it (`<namespace>___<name>/<subset>/0.0.0/<commit>/`
with `dataset_info.json` and `<name>-<split>.arrow`), by `datasets`' own JSON builder, and read back
with the Hub offline, so `datasets.load_dataset(NAME)` takes its real offline path (the cached-dataset
fallback) and nothing is monkeypatched at the call site.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignscope.cli.main import main
from alignscope.data.loader import HubSpec, load_data, parse_hub_spec
from alignscope.data.records import PairExample
from alignscope.errors import DataError

datasets = pytest.importorskip("datasets")

COMMIT = "0123abcd"
TRAIN = [{"prompt": f"What is item {i}?", "chosen": f"Item {i} is a fox.", "rejected": "I will not say."} for i in range(6)]
TEST = [{"prompt": f"Which city is number {i}?", "chosen": "Paris is.", "rejected": "No."} for i in range(3)]
CHAT = [{"prompt": [{"role": "user", "content": f"Which city is number {i}?"}], "chosen": "Paris is.", "rejected": "No."}
        for i in range(4)]
NOISY = TRAIN[:2] + [{"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}] + TRAIN[2:4]  # line 3: identical pair


def cache_hub_dataset(cache: Path, repo_id: str, subset: str, splits: dict[str, list[dict]]) -> Path:
    """Write `splits` into the `datasets` cache `cache` as a Hub download of `repo_id`'s `subset` leaves them."""
    from datasets.packaged_modules.json.json import Json

    namespace, name = repo_id.split("/")
    work = cache.parent / "hub_src" / repo_id / subset
    work.mkdir(parents=True)
    files = {}
    for split, rows in splits.items():
        files[split] = str(work / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    Json(cache_dir=str(work / "built"), dataset_name=name, config_name=subset, config_id=subset, hash=COMMIT,
         data_files=files).download_and_prepare()
    dest = cache / f"{namespace}___{name}" / subset / "0.0.0" / COMMIT
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(work / "built" / name / subset / "0.0.0" / COMMIT), str(dest))
    return dest


def offline_env(home: Path) -> dict[str, str]:
    return {"HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A temporary HF home with two cached Hub datasets, and the Hub offline (env and `datasets`' settings,
    which it reads at import)."""
    import huggingface_hub.constants

    home = tmp_path / "hf_home"
    for key, value in offline_env(home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = home / "datasets"
    cache_hub_dataset(cache, "alignscope-test/tiny_prefs", "default", {"train": TRAIN, "test": TEST})
    cache_hub_dataset(cache, "alignscope-test/two_subsets", "clean", {"train": CHAT})
    cache_hub_dataset(cache, "alignscope-test/two_subsets", "noisy", {"train": NOISY})
    return cache


@pytest.mark.parametrize("text, spec", [
    ("hf:org/name", HubSpec("hf:org/name", "org/name")),
    ("hf:name@test", HubSpec("hf:name@test", "name", None, "test")),
    ("hf:openai/gsm8k:main", HubSpec("hf:openai/gsm8k:main", "openai/gsm8k", "main")),
    ("hf:openai/gsm8k:main@train[:10%]", HubSpec("hf:openai/gsm8k:main@train[:10%]", "openai/gsm8k", "main", "train[:10%]")),
])
def test_hub_specs_parse(text, spec):
    assert parse_hub_spec(text) == spec


@pytest.mark.parametrize("text, problem", [
    ("hf:", "has no name"), ("hf://datasets/org/name", "is not a Hub dataset id"), ("hf:a/b/c", "is not a Hub dataset id"),
    ("hf:org/name:", "subset after ':' is empty"), ("hf:org/name@", "split after '@' is empty"),
])
def test_a_malformed_hub_spec_shows_the_syntax(text, problem):
    with pytest.raises(DataError, match="hf:NAME\\[:SUBSET\\]\\[@SPLIT\\]") as e:
        load_data(text)
    assert problem in str(e.value) and str(e.value).startswith(text)


def test_a_cached_hub_dataset_loads_offline_by_split_and_subset(hub_cache):
    train = load_data("hf:alignscope-test/tiny_prefs")
    assert (train.format, train.source, len(train.examples)) == ("pairwise", "hf:alignscope-test/tiny_prefs", 6)
    assert train.examples[0] == PairExample("What is item 0?", "Item 0 is a fox.", "I will not say.")
    test = load_data("hf:alignscope-test/tiny_prefs@test")
    assert [ex.prompt for ex in test.examples] == [r["prompt"] for r in TEST]
    chat = load_data("hf:alignscope-test/two_subsets:clean")  # a chat prompt stays a chat
    assert [ex.prompt for ex in chat.examples] == [r["prompt"] for r in CHAT]
    assert len(load_data("hf:alignscope-test/tiny_prefs:default@train[:2]").examples) == 2
    assert len(load_data("hf:alignscope-test/tiny_prefs", split="test").examples) == 3  # the caller's split when the spec has none
    prompts = load_data("hf:alignscope-test/tiny_prefs", format="prompt", as_chat=True).examples
    assert prompts[0].prompt == [{"role": "user", "content": "What is item 0?"}]


def test_not_cached_offline_names_the_dataset_and_both_fixes(hub_cache):
    with pytest.raises(DataError) as e:
        load_data("hf:alignscope-test/missing:main")
    msg = str(e.value)
    assert msg.startswith("hf:alignscope-test/missing:main: the Hub dataset 'alignscope-test/missing' (subset 'main') is not in "
                          f"the local datasets cache ({hub_cache})")
    assert "download it once with network" in msg and "datasets.load_dataset('alignscope-test/missing', 'main', split='train')" in msg
    assert "save_to_disk('FOLDER') and pass the folder" in msg
    with pytest.raises(DataError, match=r"subset 'nosuch'\) is not in the local datasets cache.*Available configs in the cache: \['default'\]"):
        load_data("hf:alignscope-test/tiny_prefs:nosuch")


def test_a_missing_split_or_subset_says_which_to_name(hub_cache):
    with pytest.raises(DataError, match=r"there is no split 'validation' \(Unknown split \"validation\". Should be one of \['train', 'test'\]"):
        load_data("hf:alignscope-test/tiny_prefs@validation")
    with pytest.raises(DataError, match=r"(?s)subset is missing or unknown \(There are multiple .*configurations in the cache: (clean, noisy|noisy, clean).*"
                       r"fix: name one of the subsets listed after ':': hf:alignscope-test/two_subsets:SUBSET"):
        load_data("hf:alignscope-test/two_subsets")


def test_a_bad_row_of_a_hub_dataset_is_located_and_skipped_into_a_local_rejects_file(hub_cache, tmp_path, monkeypatch):
    spec = "hf:alignscope-test/two_subsets:noisy"
    with pytest.raises(DataError, match=rf"^{spec}, line 3, field 'rejected': chosen is identical to rejected"):
        load_data(spec)
    monkeypatch.chdir(tmp_path)
    loaded = load_data(spec, on_error="skip", log=lambda _: None)
    assert (len(loaded.examples), loaded.n_rejected) == (4, 1)
    assert loaded.rejects_path == tmp_path / "two_subsets_noisy.rejects.jsonl" and loaded.rejects_path.is_file()


def test_the_hub_s_own_not_found_error_is_translated(monkeypatch):
    """Online, an unknown or gated dataset: `datasets` raises DatasetNotFoundError (no network here, so raised by hand)."""
    from datasets.exceptions import DatasetNotFoundError

    def not_found(*args, **kwargs):
        raise DatasetNotFoundError("Dataset 'org/nope' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataError, match=r"(?s)hf:org/nope: the Hub has no dataset 'org/nope' that can be read.*hf auth login"):
        load_data("hf:org/nope")


def test_train_dpo_reads_data_and_eval_data_from_the_cache(hub_cache, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "dpo", "model=tiny", "data=hf:alignscope-test/tiny_prefs", "eval_data=hf:alignscope-test/tiny_prefs@test",
                 "max_steps=1", "batch_size=2", "max_length=32", f"output_dir={out}", "progress=false"]) == 0
    assert (out / "metrics.jsonl").is_file()


def test_audit_data_reads_a_cached_hub_dataset_and_records_its_spec(hub_cache, lab_tiny, tmp_path, capsys):
    spec = "hf:alignscope-test/two_subsets:clean"
    assert main(["audit", "data", "--model", "lab:tiny", "--data", spec, "--out", str(tmp_path / "audit")]) == 0
    manifest = json.loads((tmp_path / "audit" / "alignscope.json").read_text())
    assert manifest["data"] == spec and manifest["summary"]["pairs"] == len(CHAT)


def test_audit_data_refuses_an_uncached_dataset_before_loading_the_model(hub_cache, tmp_path, capsys):
    assert main(["audit", "data", "--model", "no-such-model-folder", "--data", "hf:alignscope-test/missing",
                 "--out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err
    assert "'alignscope-test/missing' is not in the local datasets cache" in err and "no-such-model-folder" not in err


def test_the_environment_alone_serves_the_cache(hub_cache, tmp_path):
    """A fresh process with only HF_HOME/HF_DATASETS_CACHE/HF_HUB_OFFLINE set, as a user runs offline."""
    env = {**os.environ, **offline_env(hub_cache.parent), "OMP_NUM_THREADS": "1"}
    code = ("from alignscope.data.loader import load_data; "
            "print(len(load_data('hf:alignscope-test/tiny_prefs@test').examples))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
