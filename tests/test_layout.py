"""The package's shape: one-way layers, no import cycle, small modules, an explicit surface."""

from __future__ import annotations

import ast
import graphlib
import importlib.metadata
import subprocess
import sys
import types
from pathlib import Path

import pytest

import crystallize

PACKAGE = Path(crystallize.__file__).resolve().parent

#: Bottom to top; a module may import its own layer and the layers below it, never above.
LAYERS = [
    {"crystallize.errors", "crystallize._version"},
    {"crystallize.fingerprint"},
    {"crystallize.store"},
    {"crystallize.model"},
    {"crystallize.running"},
    {"crystallize.render"},
    {"crystallize.experiment"},
    {"crystallize.config"},
    {"crystallize.ui"},
    {"crystallize.cli"},
    {"crystallize"},
]

PUBLIC_API = [
    "Artifact", "ArtifactPlugin", "BasePlugin", "ConditionMetrics", "ConfigError",
    "ContextMutationError", "CrystallizeError", "DaskExecutor", "DataSource", "Event",
    "Executor", "Experiment", "ExperimentFailedError", "ExperimentGraph", "ExperimentInput",
    "ExperimentMetrics", "FrozenContext", "GraphError", "Hypothesis", "HypothesisResult",
    "InlineExecutor", "LoggingPlugin", "MissingArtifactError", "PicklingError", "Pipeline",
    "PipelineStep", "ProcessExecutor", "Result", "ScaffoldError", "SeedPlugin",
    "ThreadExecutor", "Treatment", "UnitError", "data_source", "hypothesis", "pipeline_step",
    "treatment", "verifier",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path) -> set[str]:
    """The crystallize modules ``name`` imports, anywhere in its body (functions included).

    Only ``if TYPE_CHECKING:`` blocks are skipped: they never run.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([child.module] if child.module else [])])
                # "from . import config" imports the submodule; its package is already
                # initialised (a parent always is before its children), so it adds no edge.
                submodules = {f"{base}.{a.name}" for a in child.names} & MODULES.keys()
                found.update(submodules)
                if len(submodules) < len(child.names):
                    found.add(base)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {module for module in found if module in MODULES}


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or (prefix != "crystallize" and module.startswith(prefix + ".")):
                return index
    raise AssertionError(f"{module} belongs to no layer; add its package to LAYERS")


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in IMPORTS.items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_modules_outside_a_subpackage_reach_it_through_its_public_face() -> None:
    private = [
        f"{module} imports {target}"
        for module, targets in IMPORTS.items()
        for target in sorted(targets)
        if target.rpartition(".")[2].startswith("_") and target != "crystallize._version"
        and not module.startswith(target.rpartition(".")[0] + ".")
        and module != target.rpartition(".")[0]
    ]
    assert private == []


def test_no_import_cycle_even_through_imports_inside_functions() -> None:
    graph = {module: set(targets) - {module} for module, targets in IMPORTS.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_import_scan_sees_function_level_imports_and_skips_type_checking() -> None:
    # experiment._experiment imports render inside visualize(), and running only for types in
    # the config builder: the scan must see the first and ignore what TYPE_CHECKING guards.
    assert "crystallize.render" in IMPORTS["crystallize.experiment._experiment"]
    assert "crystallize.config._loader" not in IMPORTS["crystallize.config._builder"]


def test_no_module_exceeds_600_lines() -> None:
    long = {
        name: count for name, path in MODULES.items()
        if (count := len(path.read_text().splitlines())) > 600
    }
    assert long == {}


def test_the_public_surface_is_exactly_all() -> None:
    assert crystallize.__all__ == PUBLIC_API
    public = {
        name for name, value in vars(crystallize).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(PUBLIC_API)
    for name in PUBLIC_API:
        assert getattr(crystallize, name).__module__.startswith("crystallize")


def test_the_package_is_marked_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'crystallize = ["py.typed"]' in pyproject


def test_the_console_script_is_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    (script,) = [
        ep for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.name == "crystallize"
    ]
    main = script.load()
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"crystallize {crystallize.__version__}"


def test_errors_share_one_root_and_keep_their_builtin_bases() -> None:
    from crystallize import errors

    bases = {
        errors.ConfigError: ValueError,
        errors.ScaffoldError: ValueError,
        errors.GraphError: ValueError,
        errors.MissingArtifactError: FileNotFoundError,
        errors.ContextMutationError: KeyError,
        errors.PicklingError: TypeError,
        errors.ExperimentFailedError: RuntimeError,
        errors.UnitError: Exception,
        errors.LimitError: ValueError,
        errors.CallbackError: RuntimeError,
        errors.HypothesisError: RuntimeError,
        errors.LoaderError: RuntimeError,
        errors.InvalidNameError: ValueError,
        errors.UnstorableValueError: TypeError,
        errors.CorruptRecordError: ValueError,
        errors.OlderLayoutError: ValueError,
        errors.StoreError: OSError,
        errors.ClusterError: RuntimeError,
        errors.WorkerKilledError: RuntimeError,
        errors.ExecutorError: RuntimeError,
        errors.RemoteTraceback: Exception,
        errors.UnreadTreatmentKeyError: ValueError,
        errors.UpstreamFailedError: FileNotFoundError,
    }
    for cls, base in bases.items():
        assert issubclass(cls, errors.CrystallizeError) and issubclass(cls, base), cls
    raised = [
        obj for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert set(raised) == {errors.CrystallizeError, *bases}
    # The tree at the top of the module names every one of them.
    doc = errors.__doc__ or ""
    assert all(cls.__name__ in doc for cls in raised)


def test_importing_the_package_imports_no_front_end() -> None:
    # The CLI and UI (rich, textual) stay out of `import crystallize`: a worker process or a
    # script pays only for what runs.
    code = (
        "import sys, crystallize\n"
        "print(sorted(m for m in sys.modules if m.startswith(('crystallize.ui', "
        "'crystallize.cli', 'textual'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_error_survives_pickling_with_its_attributes(tmp_path: Path) -> None:
    # Errors raised in a worker process travel back pickled; one that cannot be rebuilt would
    # turn into an unrelated TypeError in the parent.
    import pickle

    from crystallize import errors

    samples = [
        errors.ConfigError("bad", file=tmp_path / "config.yaml", key="steps", line=3),
        errors.ScaffoldError("exists"),
        errors.GraphError("cycle"),
        errors.MissingArtifactError("gone", producer="p", path=tmp_path / "v0"),
        errors.ContextMutationError("twice"),
        errors.PicklingError("lock"),
        errors.UnitError("mod.Boom", "it broke", "Traceback ..."),
        errors.ExperimentFailedError({"e": "boom"}, {}),
        errors.LimitError("too many"),
        errors.CallbackError("callback raised"),
        errors.HypothesisError("verifier raised"),
        errors.LoaderError("loader raised"),
    ]
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert vars(copy) == vars(error)
