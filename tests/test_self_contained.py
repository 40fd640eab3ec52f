"""A saved compact folder carries its own modeling code (`grain.models.self_contained`): it loads through
the HF Auto classes with `trust_remote_code=True` in a process where `import grain` fails, every family
and head, with grain's outputs; with grain imported it loads without `trust_remote_code` as before."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoModelForTokenClassification
from transformers.dynamic_module_utils import get_imports

import grain  # noqa: F401  (registers the compact classes)
from grain.models.masks import EncoderShape
from grain.models.self_contained import save_compact
from grain.models.slicing import compact_from_masked
from tests.helpers.hidden_grain import HIDE_GRAIN
from tests.helpers.models import FAMILIES, hard_masks, tiny_model, token_batch

CASES = [(family, head) for family, (_, _, heads) in FAMILIES.items() for head in heads]
AUTO = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
        "qa": AutoModelForQuestionAnswering}

# Runs where grain cannot be imported (HIDE_GRAIN), loads
# every folder with trust_remote_code=True, compares with the outputs grain saved beside it, and tries
# one folder without trust_remote_code.
WITHOUT_GRAIN = HIDE_GRAIN + textwrap.dedent("""
    import torch
    import transformers

    try:
        import grain
        sys.exit("grain imported")
    except ImportError:
        pass
    report = {}
    for folder, auto in json.loads(sys.argv[1]).items():
        model = getattr(transformers, auto).from_pretrained(folder, trust_remote_code=True).eval()
        saved = torch.load(f"{folder}/expected.pt", weights_only=True)
        with torch.no_grad():
            out = model(**saved["inputs"])
        diff = max(float((out[name] - value).abs().max()) for name, value in saved["outputs"].items())
        report[folder] = {"class": type(model).__module__ + "." + type(model).__name__, "diff": diff}
    try:
        getattr(transformers, auto).from_pretrained(folder)
        report["without_trust"] = "loaded"
    except ValueError as err:
        report["without_trust"] = str(err)
    with open(sys.argv[2], "w") as out:
        json.dump(report, out)
""")


def compact_case(family: str, head: str):
    """A tiny compact model with every corner case of `hard_masks`, and a padded batch of its inputs."""
    dense = tiny_model(family, head)
    compact = compact_from_masked(dense, hard_masks(EncoderShape.of(dense)))[0].eval()
    pad_id = dense.config.pad_token_id
    inputs = token_batch(pad_id=pad_id, token_types="halves" if family in ("bert", "electra") else None)
    return compact, inputs


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory):
    """{folder: Auto class name} for every family and head, each with `expected.pt`: inputs and grain's outputs."""
    root = tmp_path_factory.mktemp("compact")
    folders = {}
    for family, head in CASES:
        model, inputs = compact_case(family, head)
        folder = save_compact(model, root / f"{family}-{head}")
        assert "auto_map" not in model.config.to_dict()  # only the saved config has it
        with torch.no_grad():
            out = model(**inputs)
        outputs = {name: value for name, value in out.items() if torch.is_tensor(value) and name != "loss"}
        torch.save({"inputs": inputs, "outputs": outputs}, folder / "expected.pt")
        folders[str(folder)] = AUTO[head].__name__
    return folders


def test_every_family_and_head_loads_without_grain(saved_folders, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    report_file = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_GRAIN, json.dumps(saved_folders), str(report_file)],
                          cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_file.read_text())
    for folder in saved_folders:
        assert report[folder]["class"].startswith("transformers_modules."), report[folder]
        assert report[folder]["diff"] < 1e-5, (folder, report[folder])
    # without grain and without trust_remote_code, transformers' own error says what to add
    assert "trust_remote_code=True" in report["without_trust"]


def test_folder_holds_its_code_and_auto_map(saved_folders):
    folder = next(f for f in saved_folders if f.endswith("roberta-token"))
    config = json.load(open(f"{folder}/config.json"))
    assert config["auto_map"]["AutoModelForTokenClassification"] == "roberta.GrainRobertaForTokenClassification"
    assert config["auto_map"]["AutoConfig"] == "roberta.GrainRobertaConfig"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification",
                                       "AutoModelForTokenClassification", "AutoModelForQuestionAnswering"}
    for name in ("roberta.py", "bert.py", "kernels.py"):  # the family's file and what it imports
        assert set(get_imports(f"{folder}/{name}")) <= {"__future__", "torch", "transformers", "dataclasses", "typing", "copy"}
        source = open(f"{folder}/{name}").read()
        assert source == open(os.path.join(os.path.dirname(grain.__file__), "models", "compact", name)).read()


@pytest.mark.parametrize("family,head", [("deberta-v2", "qa"), ("distilbert", "token")])
def test_with_grain_it_loads_without_trust_remote_code(saved_folders, family, head):
    folder = next(f for f in saved_folders if f.endswith(f"{family}-{head}"))
    model = AUTO[head].from_pretrained(folder).eval()
    assert type(model).__module__.startswith("grain.models.compact.")
    saved = torch.load(f"{folder}/expected.pt", weights_only=True)
    with torch.no_grad():
        out = model(**saved["inputs"])
    for name, value in saved["outputs"].items():
        torch.testing.assert_close(out[name], value, atol=0, rtol=0)
