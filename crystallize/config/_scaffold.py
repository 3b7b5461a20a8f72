"""Scaffolding a folder experiment: ``crystallize new`` and the UI's Create New Experiment."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import ScaffoldError, did_you_mean
from ._files import CONFIG_FILE, display_path, locate_experiment, sibling_names

_CONFIG_TEMPLATE = """\
# {name}: a crystallize folder experiment. Run it with: crystallize run {folder}
name: {name}
replicates: 3
strategy: resume            # reuse the stored run while nothing it depends on changed
{datasource}steps:
  - example_step            # a @pipeline_step factory in steps.py
treatments:
  shifted: {{offset: 1.0}}    # reaches example_step's `offset` parameter
{outputs}"""

_STEPS_TEMPLATE = '''\
"""Steps of the {name} experiment."""

from __future__ import annotations

import random
from typing import Any

from crystallize import {imports}


@pipeline_step()
def example_step(
    data: Any, ctx: FrozenContext, {artifact_params}offset: float = 0.0
) -> tuple[Any, dict[str, float]]:
    """Record a score per replicate; the `shifted` treatment sets ``offset``.

    {data_doc}
    """
    rng = random.Random(ctx["seed"])  # the replicate's own seed: reproducible on every executor
    score = rng.gauss(0.0, 1.0) + offset
{writes}    return data, {{"score": score}}
'''

_OUTPUTS_TEMPLATE = '''\
"""Writers and loaders of the {name} experiment's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def dump_json(obj: Any) -> str:
    """Encode ``obj`` as the text of a JSON file."""
    return json.dumps(obj, indent=2, sort_keys=True)


def load_json(path: Path) -> Any:
    """Decode a JSON file written by :func:`dump_json`."""
    return json.loads(path.read_text(encoding="utf-8"))
'''


def _resolve_use(root: Path, ref: str) -> tuple[str, str]:
    """Check ``EXPERIMENT#OUTPUT`` against the experiments under ``root``; return the pair."""
    experiment, _, output = ref.partition("#")
    if not experiment or not output or "#" in output:
        raise ScaffoldError(f"--use {ref}: expected EXPERIMENT#OUTPUT, e.g. --use producer#summary")
    config = locate_experiment(root, experiment)
    if config is None:
        names = sibling_names(root)
        raise ScaffoldError(
            f"--use {ref}: no experiment {experiment!r} in {display_path(root)}"
            f"{did_you_mean(experiment, names)}. Experiments there: {', '.join(names) or 'none'}"
            " (use --root to point at another folder)"
        )
    aliases = config.output_aliases
    if output not in aliases:
        raise ScaffoldError(
            f"--use {ref}: experiment {experiment!r} ({display_path(config.path)}) has no output "
            f"{output!r}{did_you_mean(output, aliases)}. Its outputs: "
            f"{', '.join(aliases) or 'none'}"
        )
    return experiment, output


def scaffold(name: str, root: Path, uses: Sequence[str], outputs: Sequence[str]) -> list[Path]:
    """Create the folder experiment ``root/name``; returns the files written.

    ``uses`` are ``EXPERIMENT#OUTPUT`` references wired into ``datasource:`` (each validated
    against the experiments under ``root``); ``outputs`` are aliases of JSON outputs the
    example step writes (``outputs.py`` is written only for them).

    :raises ScaffoldError: for an invalid name, an existing folder or a bad reference
    """
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ScaffoldError(f"invalid experiment name {name!r}: use letters, digits, '_', '-', '.'")
    folder = root / name
    if folder.exists():
        raise ScaffoldError(f"{display_path(folder)} already exists; choose another NAME or --root")
    bad = [o for o in outputs if not o.isidentifier()]
    if bad or len(set(outputs)) != len(outputs):
        raise ScaffoldError(
            f"--output names must be distinct Python identifiers, got {list(outputs)}")
    inputs: dict[str, str] = {}
    for ref in uses:
        experiment, output = _resolve_use(root, ref)
        alias = re.sub(r"\W", "_", f"{experiment}_{output}")
        inputs[alias if alias not in inputs else f"{alias}_{len(inputs)}"] = ref

    folder_text = display_path(folder).as_posix()
    datasource = "".join(
        ["datasource:                 # <experiment>#<output alias>\n"]
        + [f"  {alias}: {ref}\n" for alias, ref in inputs.items()]
    ) if inputs else ""
    outputs_text = "".join(
        ["outputs:                    # writer/loader are functions in outputs.py\n"]
        + [f"  {o}: {{file_name: {o}.json, writer: dump_json, loader: load_json}}\n"
           for o in outputs]
    ) if outputs else ""
    data_doc = (
        "``data`` is ``{" + ", ".join(f'"{a}": ...' for a in inputs) + "}``: each value is the "
        "upstream loader's output."
        if inputs else "``data`` is None: this experiment has no datasource yet."
    )
    files = {
        folder / CONFIG_FILE: _CONFIG_TEMPLATE.format(
            name=name, folder=folder_text, datasource=datasource, outputs=outputs_text
        ),
        folder / "steps.py": _STEPS_TEMPLATE.format(
            name=name,
            imports=", ".join((["Artifact"] if outputs else []) + ["FrozenContext",
                                                                   "pipeline_step"]),
            artifact_params="".join(f"{o}: Artifact, " for o in outputs),
            data_doc=data_doc,
            writes="".join(f'    {o}.write({{"score": score}})\n' for o in outputs),
        ),
    }
    if outputs:
        files[folder / "outputs.py"] = _OUTPUTS_TEMPLATE.format(name=name)
    try:
        folder.mkdir(parents=True)
    except OSError as exc:  # the root is a file, read-only, on a full disk...
        raise ScaffoldError(
            f"cannot create {display_path(folder)}: {exc.strerror}; pass a folder you can write "
            "to (--root)") from None
    try:
        for path, text in files.items():
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)  # ours, and half-written: leave nothing behind
        raise ScaffoldError(f"cannot write {display_path(folder)}: {exc.strerror}") from None
    return list(files)
