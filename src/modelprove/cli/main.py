"""The ``modelprove`` command line: protect, verify, steal (the adversary's side), and listings of what is registered."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from modelprove.cli.paths import check_output_file, check_parent, is_verdict_file
from modelprove.core.config import config_from_pairs, describe_fields, pair_keys
from modelprove.core.errors import ModelproveError
from modelprove.core.verdict import Verdict, format_p, verdict_table


class _Commands(TyperGroup):
    """typer's rich help shows a value type after flags that take none (``--help <bool>``, ``--force
    <bool>``); an empty metavar hides it, on every command, whoever adds it."""

    def get_command(self, ctx, cmd_name):  # type: ignore[no-untyped-def]
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _untyped_flags(command, ctx)
        return command

    def format_help(self, ctx, formatter):  # type: ignore[no-untyped-def]
        _untyped_flags(self, ctx)
        super().format_help(ctx, formatter)


def _untyped_flags(command, ctx) -> None:  # type: ignore[no-untyped-def]
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


app = typer.Typer(
    cls=_Commands,
    help="Prove that a suspect image classifier was stolen from yours.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 120)


def _grid_seeds(config, seeds: str):
    """``config`` for a subset of its seeds (``bench --seeds``)."""
    import dataclasses

    try:
        chosen = tuple(dict.fromkeys(int(part) for part in seeds.split(",") if part.strip()))
    except ValueError:
        chosen = ()
    unknown = [seed for seed in chosen if seed not in config.seeds]
    if not chosen or unknown:
        raise ModelproveError(f"--seeds {seeds!r}: the grid {config.name} has seeds {list(config.seeds)}.",
                              fix=f"pass some of them, comma-separated (e.g. --seeds {config.seeds[0]}).")
    return dataclasses.replace(config, seeds=chosen)


def _fail(error: Exception) -> None:
    text = error.for_cli() if isinstance(error, ModelproveError) else str(error)
    Console(stderr=True).print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def protect(
    out_dir: Annotated[Path, typer.Option("--out", help="Protection directory to create.")],
    method: Annotated[str, typer.Option(help="Ownership method (see `modelprove methods`).")] = "move",
    data: Annotated[str, typer.Option(help="Dataset name (fashion-mnist, mnist, cifar10) or a path.")] = "fashion-mnist",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the named dataset's files are.")] = None,
    attacker_fraction: Annotated[float, typer.Option(help="Share of the training set kept out for attackers.")] = 0.5,
    defender_limit: Annotated[Optional[int], typer.Option(help="Use at most this many defender images.")] = None,
    test_limit: Annotated[Optional[int], typer.Option(help="Use at most this many test images.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of every random choice (default: the method's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Method parameter key=value (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing protection (kept as NAME.replaced-<time>).")] = False,
    model: Annotated[Optional[Path], typer.Option(
        help="An already trained source model to protect (methods that fingerprint, e.g. cae).")] = None,
    logo: Annotated[Optional[Path], typer.Option(help="The owner's logo image (blind-watermark).")] = None,
    panel_size: Annotated[int, typer.Option(help="Null panel: honest models per architecture.")] = 12,
    panel_archs: Annotated[Optional[str], typer.Option(
        help="Null panel architectures, comma-separated (default: the victim's and two others).")] = None,
    panel_epochs: Annotated[int, typer.Option(help="Null panel: training epochs (its recipes scale them).")] = 5,
    panel_recipes: Annotated[Optional[str], typer.Option(
        help="Null panel recipes, comma-separated, taken in turn (default: the six of methods/panel.py "
             "PANEL_RECIPES; `modelprove bench move-panel` measured them).")] = None,
    panel_store: Annotated[Optional[Path], typer.Option(
        help="Where null-panel models are kept and shared between protections of the same data "
             "(default $MODELPROVE_PANELS or ~/.cache/modelprove/panels).")] = None,
    extend: Annotated[Optional[Path], typer.Option(
        help="Extend this existing protection instead (read only; the extension is a new protection at --out): "
             "--set the fields its method can add, e.g. MOVE's architectures=lenet5, with the same --data options "
             "it was protected with.")] = None,
) -> None:
    """Protect a model with the method and write everything `verify` needs to --out."""
    from modelprove.data import load_splits
    from modelprove.methods import get_method
    from modelprove.methods.panel import PanelConfig
    from modelprove.methods.protection import Protection, ensure_writable

    if extend is not None:
        _extend(extend, out_dir, data, data_dir, attacker_fraction, defender_limit, test_limit, set_, force,
                panel_store)
        return
    try:
        spec = get_method(method)
        inputs = {name: value for name, value in (("model", model), ("logo", logo)) if value is not None}
        for name in inputs:
            if name not in spec.inputs:
                raise ModelproveError(f"method {method!r} takes no --{name}.",
                                      fix=f"drop --{name}, or see `modelprove methods` for what {method} takes.")
        _check_set_keys(spec, set_, "protect")
        if seed is not None and "seed" in pair_keys(set_):
            _agree("seed", "--seed", seed, config_from_pairs(spec.config, set_).seed)
        config = config_from_pairs(spec.config, set_, seed=seed)  # None keeps --set seed= or the default
        panel = PanelConfig(size=panel_size, architectures=panel_archs or "", epochs=panel_epochs,
                            store=str(panel_store) if panel_store else None,
                            **({"recipes": panel_recipes} if panel_recipes else {}))
        ensure_writable(out_dir, force)  # before any training: not over a protection, nor inside one
        check_parent(out_dir, "--out")
        splits = load_splits(
            data, data=data_dir, attacker_fraction=attacker_fraction, seed=config.seed,
            defender_limit=defender_limit, test_limit=test_limit,
        )
        result = spec.protect(splits.defender, splits.test, out_dir, config, force=force, panel=panel, **inputs)
        protection_id = Protection.open(out_dir).protection_id
        opened = spec.open(out_dir)
        premise = spec.premise(opened, opened.config)
    except ModelproveError as error:
        _fail(error)
    table = Table(title=f"protection written to {out_dir}")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in result.results.items():  # every method's numeric results, e.g. victim_test_accuracy
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            table.add_row(key.replace("_", " "), f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in result.results.get("seconds", {}).items():
        table.add_row(f"seconds: {key}", f"{value:.1f}")
    out.print(table)
    out.print(self_test_table(result.results["calibration"]))
    if premise is not None:
        out.print(f"[bold yellow]warning:[/] {premise} Every null-panel verdict of this protection will be "
                  "inconclusive: protect again with settings under which the victim learns it.", soft_wrap=True)
    out.print(f"protection id: {protection_id}", highlight=False, soft_wrap=True)
    out.print("Register this id now (e.g. with a timestamping service or a notary), before anyone sees a "
              "suspect: every verdict states the id it checked, and `modelprove verify --protection-id ID` "
              "refuses any protection changed since.", highlight=False)


def _extend(existing: Path, out_dir: Path, data: str, data_dir: Optional[Path], attacker_fraction: float,
            defender_limit: Optional[int], test_limit: Optional[int], set_: Optional[list[str]], force: bool,
            panel_store: Optional[Path]) -> None:
    """``protect --extend``: a new protection from an existing one plus its method's extendable fields."""
    from modelprove.data import load_splits
    from modelprove.methods import get_method
    from modelprove.methods.panel import PanelConfig
    from modelprove.methods.protection import Protection, ensure_writable

    try:
        original = Protection.open(existing)
        spec = get_method(original.manifest["method"])
        changes = dict(pair.split("=", 1) for pair in (set_ or []) if "=" in pair)
        if len(changes) != len(set_ or []):
            raise ModelproveError("--set takes key=value pairs.", fix="e.g. --set architectures=lenet5")
        ensure_writable(out_dir, force)
        check_parent(out_dir, "--out")
        config = original.config_as(spec.config)
        splits = load_splits(data, data=data_dir, attacker_fraction=attacker_fraction, seed=config.seed,
                             defender_limit=defender_limit, test_limit=test_limit)
        recorded = original.manifest.get("calibration", {}).get("panel", {}).get("config")
        panel = PanelConfig(**{**(recorded or {}), **({"store": str(panel_store)} if panel_store else {})})
        results = spec.extend(original, splits.defender, splits.test, out_dir, changes, force=force, panel=panel)
        protection_id = Protection.open(out_dir).protection_id
    except ModelproveError as error:
        _fail(error)
    out.print(self_test_table(results["calibration"]))
    out.print(f"extended {existing} into {out_dir}; protection id: {protection_id}", highlight=False, soft_wrap=True)
    out.print("Register this id now, as for any protection: the original's id stays valid for what it verified.",
              highlight=False)


def self_test_table(calibration: dict) -> Table:
    """The protection's self-test: does the victim stand out from each architecture's null panel?"""
    table = Table(title="self-test: the victim against the null panel (full verification pool)")
    for column in ("variant", "panel", "K", "panel mean ± sd", "victim", "p", "detected", "panel leave-one-out FAR"):
        table.add_column(column)
    for variant, record in calibration["variants"].items():
        for arch, test in record["self_test"].items():
            far = record["false_accusation_rate"][arch]
            k = sum(1 for m in calibration["panel"]["members"] if m["arch"] == arch)
            table.add_row(variant, arch, str(k), f"{test['panel_mean']:.3f} ± {test['panel_sd']:.3f}",
                          f"{test['statistic']:.3f}", format_p(test["p_value"]),
                          "[green]yes[/]" if test["detected"] else "[bold yellow]no[/]",
                          "-" if far["leave_one_out"] is None else f"{far['leave_one_out']:.2f}")
    return table


@app.command()
def verify(
    protection: Annotated[Path, typer.Option(help="Protection directory made by `modelprove protect`.")],
    suspect: Annotated[str, typer.Option(help="Suspect: a model file (NAME.safetensors + NAME.json), NAME.onnx, or "
                                              "an Open Inference Protocol URL http://HOST:PORT/v2/models/NAME.")],
    access: Annotated[Optional[str], typer.Option(
        help="Verify at this access level: white-box, black-box or label-only (default: the most the suspect "
             "file offers that the method uses).")] = None,
    outputs: Annotated[Optional[str], typer.Option(
        help="What an ONNX suspect returns: logits or probabilities (default: logits, refused if its outputs "
             "already are probabilities).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Most images the suspect may be queried with.")] = None,
    m: Annotated[Optional[int], typer.Option(help="Images per test (default: the protection's, per setting).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Significance level (default: the protection's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampled verification images.")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Verification option key=value (repeatable; see `modelprove methods`).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the verdict as JSON here.")] = None,
    rule: Annotated[str, typer.Option(
        help="Decision rule: panel (the suspect against the protection's null panel of honest models) or paper "
             "(the method's paper test, to reproduce its tables).")] = "panel",
    competence: Annotated[Optional[float], typer.Option(
        help="Share of the way from chance to the victim's clean accuracy a suspect must reach to be judged "
             "(default 0.5; 0 turns the check off).")] = None,
    force: Annotated[bool, typer.Option(
        help="Replace an existing --json verdict or --report report (only files modelprove wrote).")] = False,
    protection_id: Annotated[Optional[str], typer.Option(
        help="The id printed by `modelprove protect` and registered then: refuse a protection whose id differs.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds to wait for each answer of a remote suspect.")] = None,
    report_out: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write a report a person reads: NAME.html (self-contained) or NAME.md.")] = None,
    public: Annotated[bool, typer.Option(
        help="With --report: leave the protection's secrets out (evidence images, key samples, per-sample scores).")] = False,
) -> None:
    """Is the suspect derived from the protected victim? Prints a verdict table, optionally JSON and a report."""
    verdict = run_verify(protection, suspect, access=access, outputs=outputs, budget=budget, m=m, alpha=alpha,
                         seed=seed, options=set_, json_out=json_out, rule=rule, competence=competence, force=force,
                         protection_id=protection_id, timeout=timeout, report_out=report_out, public=public)
    out.print(verdict_table([verdict], title=f"verdict for {suspect}"))
    out.print(f"{verdict.decision}: {verdict.reason}", highlight=False)
    out.print(f"checked protection id {verdict.protection_id} "
              + ("(matches --protection-id)" if protection_id else
                 "(not compared with a registered id: pass --protection-id)"), highlight=False, soft_wrap=True)
    if report_out is not None:
        out.print(f"report written to {report_out}", highlight=False)


def run_verify(
    protection: Path, suspect: Path | str, *, access: str | None = None, outputs: str | None = None,
    budget: int | None = None, m: int | None = None, alpha: float | None = None, seed: int = 0,
    options: list[str] | None = None, json_out: Path | None = None, name: str | None = None,
    rule: str = "panel", competence: float | None = None, force: bool = False,
    protection_id: str | None = None, timeout: float | None = None, report_out: Path | None = None,
    public: bool = False,
) -> Verdict:
    """verify's work: ``json_out`` is checked before anything runs (never an input, never inside a
    protection, an existing file only with ``force`` and only a verdict), then the protection is
    opened (and compared with the registered ``protection_id``), then the suspect is verified."""
    from modelprove.access import WHITE_BOX, is_remote, open_suspect, suspect_files
    from modelprove.methods import get_method
    from modelprove.methods.protection import MANIFEST, Protection, check_protection_id

    try:
        if protection_id is not None:
            protection_id = check_protection_id(protection_id)
        if json_out is not None:
            check_output_file(json_out, flag="--json", force=force, suffixes=(".json",), what="verdict",
                              inputs=[*([] if is_remote(str(suspect)) else suspect_files(suspect)),
                                      Path(protection) / MANIFEST],
                              replaceable=is_verdict_file)
        if report_out is not None:
            _check_report_path(report_out, force, inputs=[*([] if is_remote(str(suspect)) else suspect_files(suspect)),
                                                           Path(protection) / MANIFEST,
                                                           *([json_out] if json_out is not None else [])])
        checked = Protection.open(protection, protection_id=protection_id)  # hashes every file once
        spec = get_method(checked.method)
        overrides = _verify_options(spec, options)
        opened = spec.open(checked)
        remote = {"timeout": timeout, "transcript": Path(json_out).with_suffix(".transcript.jsonl") if json_out
                  else None} if is_remote(str(suspect)) else {}  # a remote suspect's queries are kept beside --json
        suspect_access = open_suspect(suspect, level=access, outputs=outputs, budget=budget,  # type: ignore[arg-type]
                                      name=name or (None if remote else Path(suspect).stem), **remote)
        if budget is not None and suspect_access.level == WHITE_BOX and WHITE_BOX in spec.access:
            raise ModelproveError("--budget does not apply: white-box verification sends no queries.",
                                  fix="drop --budget, or verify with --access black-box.")
        if m is not None:
            key = "m_black_box" if suspect_access.level != WHITE_BOX and "m_black_box" in spec.verify_options else "m"
            if key not in spec.verify_options:
                raise ModelproveError(f"method {spec.name!r} has no --m: its verification uses every key sample.",
                                      fix="drop --m.")
            overrides[key] = _agree(key, "--m", m, overrides.get(key))
        alpha_field = getattr(spec, "alpha_field", "alpha")  # --alpha names every method's significance level
        alpha = _agree(alpha_field, "--alpha", alpha, overrides.pop(alpha_field, None))
        verdict = spec.verify(opened, suspect_access, seed=seed, alpha=alpha, rule=rule, competence=competence,
                              **overrides)
        verdict.hashes.update(suspect_access.file_hashes)
        if hasattr(suspect_access, "transcript"):
            verdict.details["transcript"] = suspect_access.transcript.summary()
        if json_out is not None:
            verdict.save(json_out)
        if report_out is not None:
            _write_verdict_report(verdict, report_out, protection, suspect, json_out, public, force)
    except ModelproveError as error:
        _fail(error)
    return verdict


def _agree(key: str, flag: str, flag_value, set_value):  # type: ignore[no-untyped-def]
    """One value of an option given as ``flag`` and/or as ``--set key=``: the same twice is fine."""
    if flag_value is not None and set_value is not None and flag_value != set_value:
        raise ModelproveError(f"{key} is given twice with different values: {flag} {flag_value} and "
                              f"--set {key}={set_value}.", fix=f"give it once, as {flag} or as --set {key}=.")
    return flag_value if flag_value is not None else set_value


def _check_report_path(path: Path, force: bool, *, flag: str = "--report", inputs=(), fmt: str | None = None) -> None:
    """A report's path, checked like every output before any work (cli.paths); --force replaces only a
    report modelprove wrote."""
    from modelprove.report.render import FORMATS, is_report_file, output_format

    output_format(path, fmt)
    check_output_file(path, flag=flag, force=force, suffixes=() if fmt else tuple(FORMATS), inputs=inputs,
                      what="report", replaceable=is_report_file)


def _write_verdict_report(verdict: Verdict, path: Path, protection: Path, suspect: Path, json_out: Path | None,
                          public: bool, force: bool) -> None:
    from modelprove.report import write_verdict_report

    write_verdict_report(verdict.to_dict(), path, protection=protection, suspect=suspect, json_path=json_out,
                         public=public, overwrite=force)


@app.command()
def report(
    verdicts: Annotated[list[Path], typer.Argument(help="Verdict JSON files written by `modelprove verify --json`.")],
    out_path: Annotated[Path, typer.Option(
        "--out", help="The report: NAME.html (one self-contained file) or NAME.md (its pictures beside it).")],
    protection: Annotated[Optional[list[Path]], typer.Option(
        help="Protection directory the verdicts were made with (repeatable), for its evidence images; "
             "opened read-only and hash-checked.")] = None,
    public: Annotated[bool, typer.Option(
        help="Leave the protection's secrets out (evidence images, style image, key samples, fingerprints, "
             "per-sample scores): for a report that leaves the owner's hands.")] = False,
    format_: Annotated[Optional[str], typer.Option("--format", help="html or md (default: from --out's suffix).")] = None,
    title: Annotated[Optional[str], typer.Option(help="The report's title.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing report.")] = False,
) -> None:
    """Render verdicts into a report a person reads: the outcome in words, plots, evidence images, provenance."""
    from modelprove.report import write_report

    from modelprove.methods.protection import MANIFEST

    try:
        _check_report_path(out_path, force, flag="--out", fmt=format_,
                           inputs=[*verdicts, *(Path(p) / MANIFEST for p in protection or [])])
        written = write_report(verdicts, out_path, protections=protection or [], public=public, fmt=format_,
                               overwrite=force, title=title)
    except ModelproveError as error:
        _fail(error)
    out.print(f"report written to {written[0]}" + (f" (+ {len(written) - 1} picture files beside it)"
                                                   if len(written) > 1 else ""), highlight=False)


def _verify_options(spec, pairs: list[str] | None) -> dict:
    """``--set key=value`` for verification: limited to what verify takes, typed by the method's config."""
    if not pairs:
        return {}
    _check_set_keys(spec, pairs, "verify")
    config = config_from_pairs(spec.config, pairs)
    return {key: getattr(config, key) for key in pair_keys(pairs)}


def _check_set_keys(spec, pairs: list[str] | None, verb: str) -> None:
    """Refuse a ``--set`` key that ``verb`` does not take, listing only what it takes: verify the
    method's verify_options, protect every field of its config (verify_options are the defaults)."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(spec.config)]
    if verb == "verify":
        accepted = ", ".join(spec.verify_options) or "no options"
    else:
        accepted = ", ".join(f for f in fields if f not in spec.verify_options)
        if spec.verify_options:
            accepted += f"; and the defaults of the verification options {', '.join(spec.verify_options)}"
    for key in pair_keys(pairs):
        if key in (spec.verify_options if verb == "verify" else fields):
            continue
        if key in fields:
            raise ModelproveError(f"{key} cannot change at verification for method {spec.name!r}; verify --set "
                                  f"takes {accepted}.", fix="other parameters define the protection; protect "
                                                            "again to change them.")
        raise ModelproveError(f"method {spec.name!r} has no field {key!r}; {verb} --set takes {accepted}.",
                              fix="see `modelprove methods` for every method's parameters.")


@app.command()
def export(
    model: Annotated[Path, typer.Option(help="Model file (NAME.safetensors + NAME.json).")],
    onnx: Annotated[Path, typer.Option(help="ONNX file to write (images in [0, 1] -> logits).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing ONNX file.")] = False,
) -> None:
    """Export a model to ONNX, e.g. to serve it or to verify it as a black-box suspect."""
    from modelprove.models import export_onnx, load_model, model_paths

    try:
        check_output_file(onnx, flag="--onnx", force=force, suffixes=(".onnx",), inputs=model_paths(model),
                          what="ONNX file")
        loaded, _ = load_model(model)
        path = export_onnx(loaded, onnx, overwrite=force)
    except ModelproveError as error:
        _fail(error)
    out.print(f"wrote {path} (input 'images' N x {loaded.in_channels} x {loaded.input_size[0]} x "
              f"{loaded.input_size[1]} in [0, 1], output 'logits' N x {loaded.num_classes})", highlight=False)


@app.command()
def steal(
    victim: Annotated[Optional[Path], typer.Option(help="Victim model file (NAME.safetensors + NAME.json).")] = None,
    attack: Annotated[Optional[str], typer.Option(
        help="NAME[:k=v,...][>NAME...]: one attack or a chain, each stage attacking the previous stage's output."
    )] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Suspect model file to write.")] = None,
    data: Annotated[str, typer.Option(help="Dataset name (fashion-mnist, mnist, cifar10) or a path.")] = "fashion-mnist",
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the named dataset's files are.")] = None,
    attacker_fraction: Annotated[float, typer.Option(
        help="Share of the training set that is the attacker's; with the same --seed this is the split "
             "`protect` kept out (both default to 0.5 and seed 0), so attacker and defender data are disjoint."
    )] = 0.5,
    attacker_limit: Annotated[Optional[int], typer.Option(help="Use at most this many attacker images.")] = None,
    test_limit: Annotated[Optional[int], typer.Option(help="Use at most this many test images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data split (protect's default: 0) and of every attack stage.")] = 0,
    budget: Annotated[Optional[int], typer.Option(help="At most this many victim queries per stage.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out model file.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List every attack with its parameters and exit.")] = False,
) -> None:
    """Steal or modify the victim as an adversary would; write the suspect and print what it cost."""
    if list_:
        list_attacks()
        return
    from modelprove.attacks import run_attack
    from modelprove.data import load_splits
    from modelprove.models import card_for, load_model, model_output_paths, model_paths, save_model

    try:
        missing = [flag for flag, value in (("--victim", victim), ("--attack", attack), ("--out", out_path))
                   if value is None]
        if missing:
            raise ModelproveError(f"steal needs {', '.join(missing)}.",
                                  fix="e.g. modelprove steal --victim victim.safetensors --attack distill --out suspect; "
                                      "`modelprove steal --list` shows the attacks.")
        for path in model_output_paths(out_path):  # before the attack runs, not after minutes of training
            check_output_file(path, flag="--out", force=force, inputs=model_paths(victim), what="model file")
        model, card = load_model(victim)
        splits = load_splits(data, data=data_dir, attacker_fraction=attacker_fraction, seed=seed,
                             attacker_limit=attacker_limit, test_limit=test_limit)
        suspect, lineage = run_attack(attack, model, splits.attacker, test=splits.test, budget=budget, seed=seed)
        training = lineage["stages"][-1].get("training")
        save_model(suspect, card_for(suspect, card.classes, training=training if isinstance(training, dict) else None,
                                     lineage=lineage), out_path, overwrite=force)
    except ModelproveError as error:
        _fail(error)
    table = Table(title=f"suspect written to {out_path}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("attack", attack)
    table.add_row("test accuracy", f"{lineage['test_accuracy']:.4f}")
    table.add_row("fidelity to the victim", f"{lineage['fidelity']:.4f}")
    table.add_row("victim queries", str(lineage["queries"]))
    table.add_row("seconds", f"{lineage['seconds']:.1f}")
    out.print(table)


def list_attacks() -> None:
    """Every registered attack: family, oracle, description, parameters with defaults."""
    from modelprove.attacks import ATTACKS

    for spec in ATTACKS.values():
        out.print(f"[bold]{spec.name}[/] ({spec.family}, {spec.oracle} oracle): {spec.description}", highlight=False)
        for name, kind, default in describe_fields(spec.config):
            out.print(f"    {name}=<{kind}>  (default {default})", highlight=False)


@app.command()
def bench(
    grid: Annotated[Optional[str], typer.Argument(
        help="A preset (see --list) or the path of a grid TOML file.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/bench/NAME).")] = None,
    cache: Annotated[Optional[Path], typer.Option(
        help="Model cache shared between grids (default runs/bench/cache).")] = None,
    report: Annotated[Optional[list[Path]], typer.Option(
        help="Also write the report here (repeatable): NAME.md (Markdown, e.g. docs/results/move-fmnist.md) or "
             "NAME.html (one self-contained page with the tables and plots).")] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="torch threads per worker process (default: 1 with several workers, else torch's).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Processes that build and verify side by side (default: the machine's cores / --threads).")] = None,
    cluster: Annotated[Optional[str], typer.Option(
        help="Run the jobs on a Dask cluster: local:N (N worker processes here) or the scheduler's address "
             "tcp://HOST:8786; --cache and --out must then be on storage every worker sees.")] = None,
    methods: Annotated[Optional[str], typer.Option(
        help="Run only these method labels (comma-separated): parallel processes may each take a part, "
             "sharing --out and --cache; then run once without it for the report.")] = None,
    report_only: Annotated[bool, typer.Option(
        help="Run nothing: write the report from the results so far, marking cells not yet verified.")] = False,
    seeds: Annotated[Optional[str], typer.Option(
        help="Run the grid for these of its seeds only (comma-separated, e.g. 0): a smaller grid whose report "
             "says which seeds it has; the same command without it later adds the rest from the cache.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the presets and exit.")] = False,
) -> None:
    """Run (or resume) a grid of methods x attacks x seeds; write results.jsonl, report.md and a plot."""
    from modelprove.bench import default_workers, load_bench_config, preset_names, run_bench

    if list_ or grid is None:
        for name in preset_names():
            config = load_bench_config(name)
            out.print(f"[bold]{name}[/]: {' '.join(config.description.split())}", highlight=False)
        return
    try:
        if cluster is not None and workers is not None:
            raise ModelproveError("--workers and --cluster both say where the jobs run.",
                                  fix="give one: --workers N (processes here) or --cluster local:N / tcp://HOST:8786.")
        config = load_bench_config(grid)
        if seeds is not None:
            config = _grid_seeds(config, seeds)
        run = run_bench(config, out_dir or Path("runs/bench") / config.name,
                        cache_dir=cache or Path("runs/bench/cache"), threads=threads, reports=report or [],
                        workers=workers if workers is not None else default_workers(threads), cluster=cluster,
                        progress=True, report_only=report_only, only_methods=[m.strip() for m in methods.split(",")] if methods else None)
    except ModelproveError as error:
        _fail(error)
    out.print(f"{len(run.records)} cells ({run.cells_run} verified now) in {run.seconds / 60:.1f} min; cache "
              f"{run.cache_hits} hits, {run.cache_misses} misses; report: {', '.join(map(str, run.reports))}",
              highlight=False)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model file (NAME.safetensors + NAME.json) or NAME.onnx to serve.")],
    port: Annotated[int, typer.Option(help="TCP port (0: a free one; the URL is printed).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = "127.0.0.1",
    output: Annotated[str, typer.Option(
        help="What the API returns: probabilities, logits, label, top-k:K or rounded:D.")] = "probabilities",
    rate_limit: Annotated[Optional[str], typer.Option(help="At most this many requests, e.g. 20/s or 600/min.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images one request may hold.")] = 256,
    name: Annotated[Optional[str], typer.Option(help="Model name in the URL (default: the file's stem).")] = None,
    outputs: Annotated[str, typer.Option(help="What an ONNX model returns: logits or probabilities.")] = "logits",
    threads: Annotated[int, typer.Option(help="torch threads for inference.")] = 1,
) -> None:
    """Serve a model over the Open Inference Protocol (KServe v2 REST) until Ctrl-C or SIGTERM."""
    from modelprove.serve import run_server

    try:
        run_server(model, host=host, port=port, output=output, rate_limit=rate_limit, max_batch=max_batch,
                   name=name, outputs=outputs, threads=threads, say=lambda line: print(line, flush=True))
    except ModelproveError as error:
        _fail(error)


@app.command("methods")
def list_methods() -> None:
    """List ownership methods, the suspect access they need, and their parameters."""
    from modelprove.methods import METHODS

    for spec in METHODS.values():
        out.print(f"[bold]{spec.name}[/] ({', '.join(spec.access)}): {spec.description}")
        fields = describe_fields(spec.config)
        groups = (("protection parameters (protect --set)", [f for f in fields if f[0] not in spec.verify_options]),
                  ("verification options (verify --set; protect --set gives their defaults)",
                   [f for f in fields if f[0] in spec.verify_options]))
        for title, group in groups:
            if group:
                out.print(f"  {title}:", highlight=False)
            for name, kind, default in group:
                out.print(f"    --set {name}=<{kind}>  (default {default})", highlight=False)


@app.command("models")
def list_models() -> None:
    """List the registered architectures."""
    from modelprove.models import ARCHITECTURES

    for name, spec in ARCHITECTURES.items():
        out.print(f"[bold]{name}[/]: {spec.description}")


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except ModelproveError as error:
        _fail(error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
