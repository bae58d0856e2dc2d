import json

import pytest

from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.verdict import Verdict
from modelprove.methods.move import MoveConfig
from modelprove.methods.protection import MANIFEST, Protection, create_protection


def _make(directory, **kwargs):
    with create_protection(directory, "move", {"m": 10}, **kwargs) as writer:
        writer.path("a.bin").write_bytes(b"alpha")
        writer.path("b.bin").write_bytes(b"beta")
        writer.record(results={"x": 1})
    return directory


def test_round_trip_hashes_every_file(tmp_path):
    protection = Protection.open(_make(tmp_path / "p"))
    assert protection.method == "move"
    assert set(protection.manifest["files"]) == {"a.bin", "b.bin"}
    assert protection.manifest["results"] == {"x": 1}
    assert protection.path("a.bin").read_bytes() == b"alpha"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_tampered_file_is_refused(tmp_path):
    directory = _make(tmp_path / "p")
    (directory / "b.bin").write_bytes(b"BETA")
    with pytest.raises(ProtectionError, match="b.bin.*sha256"):
        Protection.open(directory)


def test_missing_file_is_refused(tmp_path):
    directory = _make(tmp_path / "p")
    (directory / "a.bin").unlink()
    with pytest.raises(ProtectionError, match="a.bin.*missing"):
        Protection.open(directory)


def test_missing_or_broken_manifest(tmp_path):
    directory = _make(tmp_path / "p")
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(ProtectionError, match="not valid JSON"):
        Protection.open(directory)
    (directory / MANIFEST).unlink()
    with pytest.raises(ProtectionError, match="no manifest.json"):
        Protection.open(directory)
    with pytest.raises(ProtectionError, match="not found"):
        Protection.open(tmp_path / "nowhere")


def test_manifest_field_checked(tmp_path):
    directory = _make(tmp_path / "p")
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["method"]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ProtectionError, match="'method'"):
        Protection.open(directory)


def test_never_overwritten_silently(tmp_path):
    directory = _make(tmp_path / "p")
    with pytest.raises(ProtectionError, match="already exists"):
        _make(directory)
    assert (directory / "a.bin").read_bytes() == b"alpha"
    _make(directory, force=True)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("p.replaced-")]
    assert len(kept) == 1 and (kept[0] / "a.bin").read_bytes() == b"alpha"


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with create_protection(tmp_path / "p", "move", {}) as writer:
            writer.path("a.bin").write_bytes(b"half")
            raise RuntimeError("crash mid-way")
    assert list(tmp_path.iterdir()) == []


def test_config_from_pairs_types_and_errors():
    config = config_from_pairs(
        MoveConfig, ["m=20", "transformation_rate=0.2", "feature=gradient", "reduction=spatial_max", "benign_seed=none"]
    )
    assert (config.m, config.transformation_rate, config.feature, config.benign_seed) == (20, 0.2, "gradient", None)
    with pytest.raises(ModelproveError, match="layer_sign_stats.*needs signed"):
        config_from_pairs(MoveConfig, ["feature=gradient"])
    # an override of None (the CLI's --seed when not given) keeps what --set said
    assert config_from_pairs(MoveConfig, ["seed=5"], seed=None).seed == 5
    assert config_from_pairs(MoveConfig, ["seed=5"], seed=7).seed == 7
    with pytest.raises(ModelproveError, match="no field 'mm'"):
        config_from_pairs(MoveConfig, ["mm=3"])
    with pytest.raises(ModelproveError, match="expects int"):
        config_from_pairs(MoveConfig, ["m=ten"])
    with pytest.raises(ModelproveError, match="one of sign, gradient"):
        config_from_pairs(MoveConfig, ["feature=raw"])
    with pytest.raises(ModelproveError, match="transformation_rate"):
        config_from_pairs(MoveConfig, ["transformation_rate=1.5"])


def test_verdict_json(tmp_path):
    verdict = Verdict("move", "white-box", "s", "stolen", "because", "paper: paired t-test", 1e-5, 0.01, 0.97,
                      "mean output", 0.9, "delta_mu", 10)
    data = json.loads(verdict.save(tmp_path / "v.json").read_text())
    assert data["decision"] == "STOLEN" and data["p_value"] == 1e-5 and data["samples"] == 10
    assert data["stolen"] is True and data["format"] == "modelprove-verdict/2"
    with pytest.raises(ValueError, match="outcome"):
        Verdict("move", "white-box", "s", "maybe", "", "", None, 0.01, None, "", None, "", 0)


def test_protection_id_changes_with_any_manifest_value_but_not_with_whitespace(tmp_path):
    directory = _make(tmp_path / "p")
    first = Protection.open(directory).protection_id
    manifest = json.loads((directory / MANIFEST).read_text())
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=8))
    assert Protection.open(directory).protection_id == first
    manifest["config"] = {**manifest.get("config", {}), "alpha": 0.5}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    assert len(first) == 64 and Protection.open(directory).protection_id != first


def test_verdict_hashes_name_the_manifest_and_the_chosen_files(tmp_path):
    import hashlib

    protection = Protection.open(_make(tmp_path / "p"))
    hashes = protection.hashes(weights="b.bin")
    assert set(hashes) == {"protection_manifest", "weights"}
    assert hashes["weights"] == hashlib.sha256(b"beta").hexdigest()
    assert hashes["protection_manifest"] == hashlib.sha256((tmp_path / "p" / MANIFEST).read_bytes()).hexdigest()
