"""No input may destroy evidence or crash the CLI (issue 13, sections 3 and 4).

Every refused case must end as one readable ``error: ...`` line on stderr, exit code 2, no
traceback, and no file changed (every file under the workspace is hashed before and after).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import save_npz_task
from modelprove.access import WhiteBoxAccess, suspect_files
from modelprove.cli.main import app
from modelprove.core.errors import ModelFileError, ProtectionError, SuspectError
from modelprove.core.fileio import sha256_file
from modelprove.methods import METHODS
from modelprove.methods.protection import Protection, ensure_writable
from modelprove.models import build_model, export_onnx
from modelprove.training.gradients import gradient_features

runner = CliRunner()
ID_LINE = re.compile(r"protection id: ([0-9a-f]{64})")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, bars_task, tiny_panel, single_thread):
    """A tiny MOVE protection of the bars task (calibrated on the session's shared null panel), a copy
    of its victim as a suspect, and its ONNX export."""
    defender, _, test = bars_task
    root = tmp_path_factory.mktemp("safety")
    save_npz_task(root, defender, test)
    result = runner.invoke(app, [
        "protect", "--method", "move", "--data", str(root / "bars_train.npz"), "--out", str(root / "prot"),
        "--set", "arch=lenet5", "--set", "epochs=2", "--set", "meta_samples=30", "--set", "meta_epochs=2",
        "--set", "m=5", "--set", "m_black_box=5", "--set", "benign_models=1", "--set", "test_transformed=20",
        "--panel-size", str(tiny_panel.size), "--panel-archs", tiny_panel.architectures,
        "--panel-epochs", str(tiny_panel.epochs), "--panel-store", tiny_panel.store,
    ])
    assert result.exit_code == 0, result.output
    (root / "protect.out").write_text(result.stdout)
    for suffix in (".safetensors", ".json"):
        shutil.copy(root / "prot" / f"victim{suffix}", root / f"suspect{suffix}")
    export_onnx(torch_model(root / "suspect"), root / "suspect.onnx")
    return root


def torch_model(path: Path):
    from modelprove.models import load_model

    return load_model(path)[0]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(result, *needles: str) -> str:
    """The result is a refusal: exit 2, exactly one ``error:`` line on stderr naming ``needles``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def refused(root: Path, args: list[str], *needles: str) -> str:
    """Run the CLI with ``args``; it must refuse (see one_error_line) and change no file under ``root``."""
    before = snapshot(root)
    line = one_error_line(runner.invoke(app, [str(a) for a in args]), *needles)
    assert snapshot(root) == before, "a refused command changed files"
    return line


def verify_args(root: Path, suspect: str | Path = "suspect.safetensors", *extra) -> list[str]:
    return ["verify", "--protection", str(root / "prot"), "--suspect", str(root / suspect), *map(str, extra)]


def verify_ok(args: list[str]) -> dict | None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    if "--json" in args:
        return json.loads(Path(args[args.index("--json") + 1]).read_text())
    return None


# -- section 3: evidence destroyed or not protected ------------------------------------------------------

@pytest.mark.parametrize("target", ["suspect.json", "suspect.safetensors"])
def test_verify_json_refuses_to_overwrite_the_suspects_files(workspace, target):
    refused(workspace, verify_args(workspace, "suspect.safetensors", "--json", workspace / target, "--force"),
            target, "is an input of this command")


@pytest.mark.parametrize("target", ["prot/manifest.json", "prot/verdict.json", "prot/victim.json"])
def test_verify_json_refuses_the_manifest_and_anything_inside_the_protection(workspace, target):
    line = refused(workspace, verify_args(workspace, "suspect.safetensors", "--json", workspace / target, "--force"))
    assert "is an input of this command" in line or "never writes into a protection directory" in line


def test_verify_json_refuses_a_directory(workspace):
    refused(workspace, verify_args(workspace, "suspect.safetensors", "--json", workspace, "--force"),
            "is a directory", "--json")


def test_verify_json_replaces_only_a_verdict_and_only_with_force(workspace, tmp_path):
    verdict = tmp_path / "verdict.json"
    verify_ok(verify_args(workspace, "suspect.safetensors", "--json", verdict))
    first = verdict.read_bytes()
    refused(tmp_path, verify_args(workspace, "suspect.safetensors", "--json", verdict), "already exists", "--force")
    assert verdict.read_bytes() == first
    verify_ok(verify_args(workspace, "suspect.safetensors", "--json", verdict, "--force"))  # a verdict: replaced
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    refused(tmp_path, verify_args(workspace, "suspect.safetensors", "--json", notes, "--force"),
            "is not a modelprove verdict")


def test_verify_json_is_checked_before_anything_runs(workspace, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("verification ran before the --json path was checked")

    monkeypatch.setattr(Protection, "open", classmethod(never))
    refused(workspace, verify_args(workspace, "suspect.safetensors", "--json", workspace / "suspect.json"))


def test_protection_id_is_printed_recorded_and_checked(workspace, tmp_path):
    printed = ID_LINE.search((workspace / "protect.out").read_text())
    assert printed, "protect prints no protection id"
    protection_id = printed.group(1)
    assert Protection.open(workspace / "prot").protection_id == protection_id
    result = runner.invoke(app, verify_args(workspace, "suspect.safetensors", "--json", tmp_path / "v.json",
                                            "--protection-id", protection_id.upper()))
    assert result.exit_code == 0, result.output
    assert f"checked protection id {protection_id}" in result.stdout
    assert json.loads((tmp_path / "v.json").read_text())["protection_id"] == protection_id


def test_an_edited_manifest_changes_the_id_and_is_refused(workspace, tmp_path):
    prot = tmp_path / "prot"
    shutil.copytree(workspace / "prot", prot)
    registered = Protection.open(prot).protection_id
    manifest = json.loads((prot / "manifest.json").read_text())
    (prot / "manifest.json").write_text(json.dumps(manifest))  # other whitespace, same content
    assert Protection.open(prot).protection_id == registered
    manifest["config"]["alpha"] = 0.5  # every file's sha256 still matches: only the id tells
    (prot / "manifest.json").write_text(json.dumps(manifest, indent=1))
    assert Protection.open(prot).protection_id != registered
    with pytest.raises(ProtectionError, match="not the registered"):
        Protection.open(prot, protection_id=registered)
    args = ["verify", "--protection", prot, "--suspect", workspace / "suspect.safetensors",
            "--protection-id", registered]
    refused(tmp_path, args, "manifest.json", registered, "not the registered")
    refused(tmp_path, [*args[:-1], "not-an-id"], "64 hexadecimal digits")


def _external_copy(workspace: Path, directory: Path) -> Path:
    """The suspect's ONNX export with its weights in an external data file (model.onnx + model.onnx.data)."""
    directory.mkdir()
    model = onnx.load(str(workspace / "suspect.onnx"))
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    return directory / "model.onnx"


def test_onnx_external_weights_are_hashed(workspace, tmp_path):
    path = _external_copy(workspace, tmp_path / "ext")
    data = tmp_path / "ext" / "model.onnx.data"
    assert suspect_files(path) == [path, data]
    first = verify_ok(["verify", "--protection", workspace / "prot", "--suspect", path, "--m", "5",
                       "--json", tmp_path / "a.json"])
    assert first["hashes"]["suspect:model.onnx.data"] == sha256_file(data)
    assert first["hashes"]["suspect_weights"] == first["hashes"]["suspect:model.onnx"] == sha256_file(path)
    # Change one external tensor in place: the .onnx file stays byte for byte the same.
    graph = onnx.load(str(path), load_external_data=False).graph
    tensor = max((t for t in graph.initializer if t.data_location == TensorProto.EXTERNAL),
                 key=lambda t: int(dict((e.key, e.value) for e in t.external_data)["length"]))
    entry = {e.key: e.value for e in tensor.external_data}
    start, length = int(entry.get("offset", 0)), int(entry["length"])
    raw = bytearray(data.read_bytes())
    raw[start:start + length] = (np.frombuffer(bytes(raw[start:start + length]), np.float32) * 0.5).tobytes()
    data.write_bytes(bytes(raw))
    second = verify_ok(["verify", "--protection", workspace / "prot", "--suspect", path, "--m", "5",
                        "--json", tmp_path / "b.json"])
    assert second["hashes"]["suspect_weights"] == first["hashes"]["suspect_weights"]
    assert second["hashes"]["suspect:model.onnx.data"] != first["hashes"]["suspect:model.onnx.data"]


def test_suspect_files_follow_external_tensors_into_subgraphs(tmp_path):
    """An If node's branches hold their own tensors (node attributes); each may live in its own file."""
    def external(name: str, value: float):
        tensor = numpy_helper.from_array(np.full(1000, value, np.float32), name)
        (tmp_path / f"{name}.bin").write_bytes(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, entry in (("location", f"{name}.bin"), ("offset", "0"), ("length", "4000")):
            tensor.external_data.add(key=key, value=entry)
        return tensor

    def branch(name: str, value: float):
        return helper.make_graph([helper.make_node("Constant", [], [f"{name}_out"], value=external(name, value))],
                                 f"{name}_graph", [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1000])])

    node = helper.make_node("If", ["cond"], ["picked"], then_branch=branch("yes", 1.0), else_branch=branch("no", 0.0))
    add = helper.make_node("Add", ["picked", "weight"], ["y"])
    graph = helper.make_graph([node, add], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])], [external("weight", 2.0)])
    path = tmp_path / "branches.onnx"
    onnx.save(helper.make_model(graph), str(path))
    listed = suspect_files(path)
    assert listed[0] == path
    assert sorted(listed[1:]) == sorted(tmp_path / f"{name}.bin" for name in ("weight", "yes", "no"))


# -- section 4: bad inputs that crash or mislead ----------------------------------------------------------

def test_verify_set_alpha_works_as_documented(workspace, tmp_path):
    verdict = verify_ok(verify_args(workspace, "suspect.safetensors", "--set", "alpha=0.05", "--json", tmp_path / "v.json"))
    assert verdict["alpha"] == pytest.approx(0.05)
    verdict = verify_ok(verify_args(workspace, "suspect.safetensors", "--alpha", "0.05", "--set", "alpha=0.05",
                                    "--m", "4", "--set", "m=4", "--json", tmp_path / "w.json"))
    assert verdict["alpha"] == pytest.approx(0.05) and verdict["samples"] == 4


@pytest.mark.parametrize("flag, value, pair", [("--alpha", "0.01", "alpha=0.05"), ("--m", "5", "m=7")])
def test_a_value_given_twice_differently_is_refused(workspace, flag, value, pair):
    key = pair.partition("=")[0]
    refused(workspace, verify_args(workspace, "suspect.safetensors", flag, value, "--set", pair),
            f"{flag} {value}", f"--set {pair}", f"{key} is given twice")


def test_protect_seed_given_twice_differently_is_refused(workspace, tmp_path):
    refused(workspace, ["protect", "--data", workspace / "bars_train.npz", "--out", tmp_path / "p",
                        "--seed", "1", "--set", "seed=2"], "--seed 1", "--set seed=2")
    assert not (tmp_path / "p").exists()


def test_unknown_set_key_lists_only_what_the_verb_takes(workspace, tmp_path):
    move = METHODS["move"]
    line = refused(workspace, verify_args(workspace, "suspect.safetensors", "--set", "nonsense=1"), "'nonsense'")
    listed = line.split("verify --set takes ", 1)[1].split(".", 1)[0]
    assert [name.strip() for name in listed.split(",")] == list(move.verify_options)
    line = refused(workspace, verify_args(workspace, "suspect.safetensors", "--set", "tile_scale=1"),
                   "tile_scale cannot change at verification", "protect again")
    line = refused(workspace, ["protect", "--data", workspace / "bars_train.npz", "--out", tmp_path / "p",
                               "--set", "nonsense=1"], "'nonsense'", "protect --set takes")
    assert all(field.name in line for field in dataclasses.fields(move.config))


class _Payload:
    def __reduce__(self):
        return os.system, ("true",)


def test_a_pickle_payload_is_named_and_weights_only_false_never_suggested(workspace):
    torch.save({"net.0.weight": torch.zeros(1), "x": _Payload()}, workspace / "evil.pt")
    card = json.loads((workspace / "suspect.json").read_text())
    (workspace / "evil.json").write_text(json.dumps({**card, "weights_sha256": ""}))
    line = refused(workspace, verify_args(workspace, "evil.pt"), "evil.pt", f"{os.system.__module__}.system",
                   "blocked")
    assert "weights_only" not in line and "False" not in line


def _tampered_suspect(workspace: Path, name: str, *, card: dict | None = None, fill: float | None = None,
                      first: float | None = None) -> str:
    """A copy of the suspect with card fields replaced, or its first weight tensor filled with ``fill``
    (or only its first element set to ``first``); the card's weights_sha256 follows the weights."""
    state = load_file(str(workspace / "suspect.safetensors"))
    key = next(k for k in state if k.endswith("weight"))
    if fill is not None:
        state[key] = torch.full_like(state[key], fill)
    if first is not None:
        state[key].view(-1)[0] = first
    save_file(state, str(workspace / f"{name}.safetensors"), metadata={"format": "modelprove-model/1"})
    record = {**json.loads((workspace / "suspect.json").read_text()), **(card or {}),
              "weights_sha256": sha256_file(workspace / f"{name}.safetensors")}
    (workspace / f"{name}.json").write_text(json.dumps(record))
    return f"{name}.safetensors"


@pytest.mark.parametrize("access", ["white-box", "black-box"])
def test_a_card_with_absurd_normalisation_is_refused(workspace, access):
    suspect = _tampered_suspect(workspace, "absurd", card={"mean": [1e30], "std": [1e-30]})
    refused(workspace, verify_args(workspace, suspect, "--access", access), "absurd.json", "'std'")


def test_an_infinite_weight_is_refused(workspace):
    suspect = _tampered_suspect(workspace, "infinite", first=float("inf"))
    refused(workspace, verify_args(workspace, suspect), "infinite.safetensors", "NaN or infinite")


@pytest.mark.parametrize("access", ["white-box", "black-box"])
def test_a_model_whose_outputs_overflow_is_refused(workspace, access):
    """Finite weights of 3e38 overflow float32: the outputs and per-sample gradients are inf/NaN."""
    suspect = _tampered_suspect(workspace, "overflow", fill=3e38)
    refused(workspace, verify_args(workspace, suspect, "--access", access), "overflow", "NaN or infinite")


def test_white_box_reads_are_checked_for_finiteness():
    model = build_model("lenet5", 1, 4, (28, 28))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight")).fill_(3e38)
    access = WhiteBoxAccess(model, name="overflow", source="overflow.safetensors")
    images = torch.rand(3, 1, 28, 28)
    with pytest.raises(SuspectError, match="overflow.safetensors: overflow returned NaN or infinite outputs"):
        access.probabilities(images)
    with pytest.raises(SuspectError, match="NaN or infinite outputs"):
        access.model(images)  # what white-box methods call directly
    with pytest.raises(SuspectError, match="per-sample gradients are NaN or infinite for 3 of 3"):
        gradient_features(access.model, images, torch.zeros(3, dtype=torch.long))


def _probability_onnx(workspace: Path) -> Path:
    """The suspect's ONNX export with a softmax appended: it answers probability vectors."""
    path = workspace / "probabilities.onnx"
    if not path.exists():
        model = onnx.load(str(workspace / "suspect.onnx"))
        logits = model.graph.output[0]
        model.graph.node.append(helper.make_node("Softmax", [logits.name], ["probabilities"], axis=1))
        output = onnx.ValueInfoProto()
        output.CopyFrom(logits)
        output.name = "probabilities"
        model.graph.output.pop()
        model.graph.output.append(output)
        onnx.save(model, str(path))
    return path


def test_an_onnx_that_outputs_probabilities_must_say_so(workspace, tmp_path):
    _probability_onnx(workspace)
    refused(workspace, verify_args(workspace, "probabilities.onnx"), "already are probability vectors",
            "--outputs probabilities", "--outputs logits")
    for outputs in ("probabilities", "logits"):  # said explicitly: taken as said
        verify_ok(verify_args(workspace, "probabilities.onnx", "--outputs", outputs, "--json", tmp_path / f"{outputs}.json"))


def test_budget_in_white_box_is_refused(workspace):
    refused(workspace, verify_args(workspace, "suspect.safetensors", "--budget", "5"),
            "white-box verification sends no queries", "drop --budget", "--access black-box")


@pytest.fixture
def no_work(monkeypatch):
    """Make any training or data loading fail the test: refusals must come before them."""
    def never(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr("modelprove.attacks.run_attack", never)
    monkeypatch.setattr("modelprove.data.load_splits", never)


@pytest.mark.parametrize("victim, out, extra, needle", [
    ("prot/victim", "s3.pt", [], "not .pt"),
    ("prot/victim", "prot/stolen", ["--force"], "never writes into a protection directory"),
    ("suspect", "suspect", ["--force"], "is an input of this command"),
    ("prot/victim", "suspect.json/stolen", [], "is a file, not a directory"),
    ("prot/victim", "suspect", [], "already exists"),
])
def test_steal_out_is_checked_before_any_work(workspace, no_work, victim, out, extra, needle):
    refused(workspace, ["steal", "--victim", workspace / victim, "--attack", "distill",
                        "--data", workspace / "bars_train.npz", "--out", workspace / out, *extra], needle, "--out")


@pytest.mark.parametrize("out, needle", [("prot/inner", "never writes into a protection directory"),
                                         ("suspect.json/p", "is a file, not a directory"),
                                         ("suspect.json", "is not a directory")])
def test_protect_out_is_checked_before_any_work(workspace, no_work, out, needle):
    refused(workspace, ["protect", "--data", workspace / "bars_train.npz", "--out", workspace / out, "--force"],
            needle, "--out")


@pytest.mark.parametrize("target, extra, needle", [
    ("prot/victim.onnx", [], "never writes into a protection directory"),
    ("suspect.onnx", [], "pass --force"),
    ("suspect.json", ["--force"], "is an input of this command"),
    ("suspect.txt", ["--force"], "must end in .onnx"),
])
def test_export_onnx_is_checked_before_any_work(workspace, target, extra, needle):
    line = refused(workspace, ["export", "--model", workspace / "suspect", "--onnx", workspace / target, *extra], needle)
    assert "overwrite=True" not in line


def test_export_onnx_refuses_a_directory(workspace, tmp_path):
    (tmp_path / "d.onnx").mkdir()
    refused(tmp_path, ["export", "--model", workspace / "suspect", "--onnx", tmp_path / "d.onnx", "--force"],
            "is a directory")


def test_the_cli_says_force_and_the_api_says_overwrite(workspace, tmp_path):
    with pytest.raises(ModelFileError) as info:
        export_onnx(torch_model(workspace / "suspect"), workspace / "suspect.onnx")
    assert "overwrite=True" in str(info.value) and "--force" not in str(info.value)
    assert "--force" in info.value.for_cli() and "overwrite=True" not in info.value.for_cli()
    with pytest.raises(ProtectionError) as info:  # what every method's protect() checks first
        ensure_writable(workspace / "prot")
    assert "force=True" in str(info.value) and "--force" not in str(info.value)
    assert "--force" in info.value.for_cli()


def test_help_shows_no_value_type_for_flags():
    commands = [[]] + [[name] for name in ("protect", "verify", "export", "steal", "bench", "methods", "models")]
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, (command, result.output)


def test_listings_show_literal_values_and_verification_options():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    assert "<Literal>" not in result.output
    assert "feature=<sign|gradient>" in result.output and "verification_images=<train|test>" in result.output
    move = result.output.split("badnets (")[0]
    protection, verification = move.split("verification options (verify --set")
    assert "transformation_rate" in protection and "--set margin" not in protection
    assert all(f"--set {name}=" in verification for name in METHODS["move"].verify_options)
    assert "transformation_rate" not in verification
    result = runner.invoke(app, ["steal", "--list"])
    assert result.exit_code == 0 and "<Literal>" not in result.output
