"""Turning one parsed ``config.yaml`` into an :class:`~crystallize.Experiment`."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import LimitError, did_you_mean
from ..experiment import Experiment
from ..model import (
    MAX_REPLICATES,
    RESERVED_KEYS,
    STRATEGIES,
    Artifact,
    ArtifactPlugin,
    BasePlugin,
    DataSource,
    ExperimentInput,
    FrozenContext,
    Hypothesis,
    LoggingPlugin,
    PipelineStep,
    SeedPlugin,
    Treatment,
    analyse_signature,
    check_timeout,
    data_source,
    type_mismatch,
    verifier,
)
from ._files import (
    CONFIG_FILE,
    TOP_LEVEL_KEYS,
    ExperimentConfig,
    display_path,
    listing,
    locate_experiment,
    sibling_names,
)
from ._modules import Modules

if TYPE_CHECKING:
    from ._loader import GraphLoader

OUTPUT_KEYS = ("file_name", "writer", "loader")
HYPOTHESIS_KEYS = ("name", "verifier", "metrics", "ranker")
PLUGINS: dict[str, type[BasePlugin]] = {
    "ArtifactPlugin": ArtifactPlugin,
    "LoggingPlugin": LoggingPlugin,
    "SeedPlugin": SeedPlugin,
}
# A @verifier factory carries no marker attribute; every one shares the code object of the
# decorator's inner factory, which identifies it without calling user code.
_VERIFIER_FACTORY_CODE = verifier(lambda baseline, treatment: {}).__code__


def rank_by_p_value(output: Mapping[str, Any]) -> float:
    """The default hypothesis ranker: the verifier's ``p_value`` (lower ranks first), else 0."""
    value = output.get("p_value")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return 0.0


class NoData(DataSource):
    """The datasource of a config without ``datasource:``; the first step receives ``None``."""

    def fetch(self, ctx: FrozenContext) -> None:
        return None

    def __repr__(self) -> str:
        return "NoData()"


# -- building one experiment ------------------------------------------------------------------
def _is_step_factory(obj: Any) -> bool:
    return callable(obj) and getattr(obj, "is_step_factory", False) is True


def _is_verifier_factory(obj: Any) -> bool:
    return getattr(obj, "__code__", None) is _VERIFIER_FACTORY_CODE


def _is_datasource(obj: Any) -> bool:
    return isinstance(obj, DataSource) or (callable(obj) and not isinstance(obj, type))


def _plain_callable(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, type)


class Builder:
    """Turns one :class:`ExperimentConfig` into an :class:`Experiment`."""

    def __init__(self, config: ExperimentConfig, loader: GraphLoader) -> None:
        self.config = config
        self.loader = loader
        self.modules = Modules(config)

    def build(self) -> Experiment:
        config = self.config
        unknown = [k for k in config.data if k not in TOP_LEVEL_KEYS]
        if unknown:
            key = str(unknown[0])
            raise config.error(
                key, f"unknown key {key!r}{did_you_mean(key, TOP_LEVEL_KEYS)}",
                f"Known keys: {', '.join(TOP_LEVEL_KEYS)}",
            )
        name = config.name
        outputs = self.outputs()
        datasource = self.datasource()
        steps, written = self.steps(outputs)
        for alias, art in outputs.items():
            if id(art) not in written:
                raise config.error(
                    f"outputs.{alias}", f"output {alias!r} is written by no step",
                    f"Give a step in steps.py a parameter `{alias}: Artifact` that calls "
                    f"{alias}.write(obj), or pass the alias to an Artifact parameter in "
                    f"steps: (- my_step: {{out: {alias}}}); otherwise remove the output",
                )
        settings: dict[str, Any] = {
            "treatments": self.treatments(steps), "replicates": self.replicates(),
            "hypotheses": self.hypotheses(), "plugins": self.plugins(),
            "strategy": self.strategy(), "initial_ctx": self.initial_ctx(),
            "description": self.description(), "retries": self.retries(),
            "timeout": self.seconds(config.data.get("timeout"), "timeout"),
        }
        try:
            return Experiment(datasource, steps, name=name, outputs=outputs, **settings)
        except (ValueError, TypeError) as exc:
            raise config.error(None, f"invalid experiment: {exc}") from None

    # -- scalar keys ------------------------------------------------------------------------
    def replicates(self) -> int | None:
        value = self.config.data.get("replicates")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.config.error(
                "replicates", f"replicates must be a whole number >= 1, got {value!r} "
                f"({type(value).__name__})", "Fix: replicates: 3",
            )
        try:
            MAX_REPLICATES.check(value, "replicates")
        except LimitError as exc:
            raise self.config.error("replicates", str(exc)) from None
        return value

    def seconds(self, value: Any, key: str) -> float | None:
        try:
            return check_timeout(value, key)
        except ValueError:
            raise self.config.error(
                key, f"timeout must be a number of seconds > 0, got {value!r}",
                f"Fix: {key.rsplit('.', 1)[-1]}: 600",
            ) from None

    def retries(self) -> int:
        value = self.config.data.get("retries", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.config.error(
                "retries", f"retries must be a whole number >= 0, got {value!r} "
                f"({type(value).__name__})", "Fix: retries: 2 (a failed unit runs twice more)",
            )
        return value

    def strategy(self) -> str:
        value = self.config.data.get("strategy", "rerun")
        if value not in STRATEGIES:
            raise self.config.error(
                "strategy", f"strategy must be one of {', '.join(STRATEGIES)}, got {value!r}"
                f"{did_you_mean(value, STRATEGIES)}", "Fix: strategy: resume",
            )
        return str(value)

    def description(self) -> str | None:
        value = self.config.data.get("description")
        if value is not None and not isinstance(value, str):
            raise self.config.error(
                "description", f"description must be text, got {value!r}",
                "Quote it: description: \"...\"",
            )
        return value

    def initial_ctx(self) -> dict[str, Any]:
        value = self.config.data.get("initial_ctx") or {}
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise self.config.error(
                "initial_ctx", f"initial_ctx must map context keys to values, got {value!r}",
                "Fix: initial_ctx: {n: 100}",
            )
        self.check_reserved(value, "initial_ctx")
        return dict(value)

    def check_reserved(self, values: Mapping[str, Any], key: str) -> None:
        """Refuse context keys every unit sets itself (a value for them would be ignored)."""
        reserved = [k for k in values if k in RESERVED_KEYS]
        if reserved:
            raise self.config.error(
                f"{key}.{reserved[0]}", f"context key {reserved[0]!r} is reserved: every "
                "unit sets condition, replicate and seed itself",
                "Rename the key; to fix the master seed use plugins: [{SeedPlugin: {seed: 7}}]",
            )

    # -- entries of the form name or {name: {param: value}} ---------------------------------
    def named_entry(self, entry: Any, key: str, what: str) -> tuple[str, dict[str, Any]]:
        if isinstance(entry, str):
            return entry, {}
        if isinstance(entry, Mapping) and len(entry) == 1:
            (name, params), = entry.items()
            if params is None:
                params = {}
            if isinstance(name, str) and isinstance(params, Mapping) and all(
                isinstance(k, str) for k in params
            ):
                return name, dict(params)
        raise self.config.error(
            key, f"each {what} is a name or {{name: {{parameter: value}}}}, got {entry!r}",
            f"Fix: `- my_{what}` or `- my_{what}: {{factor: 2}}`",
        )

    def check_params(
        self, fn: Callable[..., Any], given: Mapping[str, Any], known: Iterable[str], key: str,
        label: str,
    ) -> None:
        known = list(known)
        accepts_any = any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()
        )
        for param in given:
            if param not in known and not accepts_any:
                raise self.config.error(
                    f"{key}.{param}", f"{label} has no parameter {param!r}"
                    f"{did_you_mean(param, known)}", f"Its parameters: {listing(known)}",
                )
        mismatch = type_mismatch(fn, given)
        if mismatch:
            raise self.config.error(
                f"{key}.{mismatch[0]}", f"{label}: {mismatch[1]}",
                "Write a value of that type (in YAML: numbers and true/false unquoted, text "
                "quoted if it looks like a number)",
            )

    # -- outputs ----------------------------------------------------------------------------
    def outputs(self) -> dict[str, Artifact]:
        raw = self.config.data.get("outputs")
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise self.config.error(
                "outputs", f"outputs must map aliases to files, got {raw!r}",
                "Fix: outputs: {summary: {file_name: summary.json, writer: dump_json, "
                "loader: load_json}}",
            )
        outputs: dict[str, Artifact] = {}
        file_names: dict[str, str] = {}
        for alias, spec in raw.items():
            key = f"outputs.{alias}"
            if not isinstance(alias, str) or not alias.isidentifier():
                raise self.config.error(
                    key, f"output alias {alias!r} must be a Python identifier, because steps "
                    "receive it as a parameter name", "Fix: use letters, digits and _",
                )
            if isinstance(spec, str) or spec is None:
                spec = {"file_name": spec or alias}
            if not isinstance(spec, Mapping):
                raise self.config.error(
                    key, f"expected {{file_name, writer, loader}}, got {spec!r}",
                    f"Fix: {alias}: {{file_name: {alias}.json, writer: dump_json, "
                    "loader: load_json}",
                )
            for field_name in spec:
                if field_name not in OUTPUT_KEYS:
                    raise self.config.error(
                        f"{key}.{field_name}", f"unknown key {field_name!r}"
                        f"{did_you_mean(field_name, OUTPUT_KEYS)}",
                        f"An output takes {', '.join(OUTPUT_KEYS)}",
                    )
            file_name = spec.get("file_name", alias)
            coders = {
                role: self.modules.lookup(
                    "outputs", spec[role], f"{key}.{role}", what=role, accept=_plain_callable,
                    fix=f"Define `def {spec[role]}(...)` in outputs.py",
                )
                for role in ("writer", "loader") if spec.get(role) is not None
            }
            try:
                art = Artifact(file_name, loader=coders.get("loader"), writer=coders.get("writer"))
            except ValueError as exc:
                raise self.config.error(f"{key}.file_name", str(exc)) from None
            if file_name in file_names:
                raise self.config.error(
                    f"{key}.file_name", f"outputs {file_names[file_name]!r} and {alias!r} both "
                    f"use file_name {file_name!r}, so consumers could not tell them apart",
                    "Give each output its own file_name",
                )
            file_names[file_name] = alias
            outputs[alias] = art
        return outputs

    # -- datasource -------------------------------------------------------------------------
    def datasource(self) -> DataSource:
        raw = self.config.data.get("datasource")
        if raw is None:
            return NoData()
        if isinstance(raw, str):
            return self.source(raw, "datasource")
        if not isinstance(raw, Mapping) or not raw:
            raise self.config.error(
                "datasource", f"expected a function name, <experiment>#<output>, or a mapping "
                f"of aliases to those, got {raw!r}",
                "Fix: datasource: {producer_summary: producer#summary}",
            )
        sources: dict[str, DataSource] = {}
        for alias, value in raw.items():
            if not isinstance(alias, str) or not alias:
                raise self.config.error(
                    "datasource", f"datasource aliases must be names, got {alias!r}",
                    "Fix: datasource: {numbers: load_numbers}",
                )
            sources[alias] = self.source(value, f"datasource.{alias}")
        single = len(sources) == 1 and not any("#" in str(v) for v in raw.values())
        return next(iter(sources.values())) if single else ExperimentInput(sources)

    def source(self, value: Any, key: str) -> DataSource:
        if isinstance(value, str) and "#" in value:
            return self.upstream(value, key)
        found = self.modules.lookup(
            "datasources", value, key, what="datasource", accept=_is_datasource,
            fix="Define `def load_numbers(ctx): ...` in datasources.py (optionally decorated "
            "with @data_source), or write <experiment>#<output> to read another experiment",
        )
        if isinstance(found, DataSource):
            return found
        try:
            factory = found if getattr(found, "is_datasource_factory", False) else data_source(
                found
            )
            return factory()
        except (TypeError, ValueError) as exc:
            raise self.config.error(key, f"cannot make a datasource of {value!r}: {exc}") from None

    def upstream(self, ref: str, key: str) -> Artifact:
        experiment, _, output = ref.partition("#")
        if not experiment or not output or "#" in output:
            raise self.config.error(
                key, f"{ref!r} is not a valid reference",
                "Write it as <experiment>#<output alias>, e.g. producer#summary",
            )
        root = self.config.folder.parent
        upstream = locate_experiment(root, experiment)
        if upstream is None:
            others = [n for n in sibling_names(root) if n != self.config.folder.resolve().name]
            raise self.config.error(
                key, f"no experiment {experiment!r} next to this one (searched the folders of "
                f"{display_path(root)} by folder name and declared name)"
                f"{did_you_mean(experiment, others)}",
                f"Experiments there: {listing(others)}. Fix the name, or create "
                f"{display_path(root / experiment / CONFIG_FILE)}",
            )
        producer = self.loader.load(upstream.path, needed_by=(self.config, key))
        art = producer.outputs.get(output) or next(
            (a for a in producer.outputs.values() if a.name == output), None
        )
        if art is None:
            raise self.config.error(
                key, f"experiment {producer.name!r} has no output {output!r}"
                f"{did_you_mean(output, producer.outputs)}",
                f"Its outputs: {listing(producer.outputs)}. Fix the alias, or declare it under "
                f"outputs: in {display_path(upstream.path)}",
            )
        return art

    # -- steps ------------------------------------------------------------------------------
    def steps(
        self, outputs: Mapping[str, Artifact]
    ) -> tuple[list[PipelineStep], dict[int, str]]:
        """The pipeline, and the ids of the outputs its steps write (with the step)."""
        raw = self.config.data.get("steps")
        if not isinstance(raw, list) or not raw:
            problem = "no steps" if raw is None else f"steps must be a non-empty list, got {raw!r}"
            raise self.config.error(
                "steps", problem,
                "Add a list of step names, e.g. `steps: [my_step]`, with "
                "`@pipeline_step()\\ndef my_step(data, ctx): ...` in steps.py",
            )
        pipeline: list[PipelineStep] = []
        written: dict[int, str] = {}
        for index, entry in enumerate(raw):
            key = f"steps[{index}]"
            limit = None
            if isinstance(entry, Mapping) and len(entry) == 2 and "timeout" in entry:
                # `- {slow: {n: 3}, timeout: 60}`: the step's own timeout, beside its parameters
                entry = dict(entry)
                limit = self.seconds(entry.pop("timeout"), f"{key}.timeout")
            name, params = self.named_entry(entry, key, "step")
            factory = self.modules.lookup(
                "steps", name, key, what="step", accept=_is_step_factory,
                fix="Decorate it with @pipeline_step() (from crystallize import pipeline_step)",
            )
            fn = factory.__wrapped__
            _, signature = analyse_signature(fn, 2)
            self.check_params(fn, params, [p.name for p in signature], f"{key}.{name}",
                              f"step {name!r}")
            for param in signature:
                if not param.is_artifact:
                    continue
                where = f"{key}.{name}.{param.name}"
                given = param.name in params
                alias = params.get(param.name, param.name)
                if not isinstance(alias, str) or alias not in outputs:
                    problem = (
                        f"its value {alias!r} is not an output alias" if given
                        else f"there is no output called {alias!r}"
                    )
                    raise self.config.error(
                        where if given else key,
                        f"parameter {param.name!r} of step {name!r} is annotated Artifact, but "
                        f"{problem}{did_you_mean(alias, outputs)}",
                        f"Outputs: {listing(outputs)}. Declare `outputs: {{{alias}: "
                        f"{{file_name: ...}}}}`, or pass an alias: `- {name}: "
                        f"{{{param.name}: <alias>}}`",
                    )
                other = written.setdefault(id(outputs[alias]), name)
                if other != name:
                    raise self.config.error(
                        where if given else key,
                        f"output {alias!r} is written by two steps, {other!r} and {name!r}; "
                        "consumers would read only one of the files",
                        "Give each step its own output (declare a second one under outputs:)",
                    )
                params[param.name] = outputs[alias]
            try:
                pipeline.append(factory(**params))
            except (TypeError, ValueError) as exc:
                raise self.config.error(key, f"cannot build step {name!r}: {exc}") from None
            if limit is not None:
                pipeline[-1].timeout = limit
        return pipeline, written

    # -- treatments, hypotheses, plugins ----------------------------------------------------
    def treatments(self, steps: list[PipelineStep]) -> list[Treatment]:
        raw = self.config.data.get("treatments")
        if raw is None:
            return []
        if not isinstance(raw, Mapping):
            raise self.config.error(
                "treatments", f"treatments must map names to context values, got {raw!r}",
                "Fix: treatments: {double: {factor: 2}}",
            )
        treatments = []
        for name, values in raw.items():
            key = f"treatments.{name}"
            values = {} if values is None else values
            if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
                raise self.config.error(
                    key, f"treatment {name!r} must map context keys to values, got {values!r}",
                    f"Fix: {name}: {{factor: 2}}",
                )
            self.check_reserved(values, key)
            try:
                treatments.append(Treatment(str(name), dict(values)))
            except (TypeError, ValueError) as exc:
                raise self.config.error(key, str(exc)) from None
            mismatch = treatments[-1].type_mismatch(steps)
            if mismatch:
                step, param, problem = mismatch
                raise self.config.error(
                    f"{key}.{param}", f"treatment {name!r} sets a value step {step!r} cannot "
                    f"take: {problem}", "Write a value of the type the step's parameter expects",
                )
        return treatments

    def hypotheses(self) -> list[Hypothesis]:
        raw = self.config.data.get("hypotheses")
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.config.error(
                "hypotheses", f"hypotheses must be a list, got {raw!r}",
                "Fix: hypotheses: [{name: better, verifier: welch_t, metrics: score}]",
            )
        made: list[Hypothesis] = []
        for index, entry in enumerate(raw):
            key = f"hypotheses[{index}]"
            if not isinstance(entry, Mapping) or "verifier" not in entry:
                raise self.config.error(
                    key, f"each hypothesis is a mapping with at least `verifier`, got {entry!r}",
                    "Fix: - {name: better, verifier: welch_t, metrics: score}",
                )
            for field_name in entry:
                if field_name not in HYPOTHESIS_KEYS:
                    raise self.config.error(
                        f"{key}.{field_name}", f"unknown key {field_name!r}"
                        f"{did_you_mean(field_name, HYPOTHESIS_KEYS)}",
                        f"A hypothesis takes {', '.join(HYPOTHESIS_KEYS)}",
                    )
            vname, params = self.named_entry(entry["verifier"], f"{key}.verifier", "verifier")
            factory = self.modules.lookup(
                "verifiers", vname, f"{key}.verifier", what="verifier",
                accept=_is_verifier_factory,
                fix="Decorate it with @verifier (from crystallize import verifier)",
            )
            fn = factory.__wrapped__
            known = list(inspect.signature(fn).parameters)[2:]
            self.check_params(fn, params, known, f"{key}.verifier.{vname}", f"verifier {vname!r}")
            metrics = entry.get("metrics")
            if metrics is not None and not (
                isinstance(metrics, str)
                or (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics))
            ):
                raise self.config.error(
                    f"{key}.metrics", f"metrics must be a metric name or a list of names, got "
                    f"{metrics!r}", "Fix: metrics: score",
                )
            ranker = rank_by_p_value
            if entry.get("ranker") is not None:
                ranker = self.modules.lookup(
                    "verifiers", entry["ranker"], f"{key}.ranker", what="ranker",
                    accept=_plain_callable,
                    fix="Define `def my_ranker(result) -> float` in verifiers.py",
                )
            name = entry.get("name", vname)
            if not isinstance(name, str) or not name or name in {h.name for h in made}:
                raise self.config.error(
                    f"{key}.name", f"hypothesis names must be distinct non-empty strings, got "
                    f"{name!r}", "Give each hypothesis its own name",
                )
            made.append(Hypothesis(
                verifier=factory(**params), metrics=metrics, ranker=ranker, name=name
            ))
            made[-1].source = f"{display_path(self.config.path)}, key '{key}'"
        return made

    def plugins(self) -> list[BasePlugin]:
        raw = self.config.data.get("plugins")
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.config.error(
                "plugins", f"plugins must be a list, got {raw!r}",
                "Fix: plugins: [{ArtifactPlugin: {versioned: true}}]",
            )
        plugins = []
        for index, entry in enumerate(raw):
            key = f"plugins[{index}]"
            name, params = self.named_entry(entry, key, "plugin")
            cls = PLUGINS.get(name)
            if cls is None:
                raise self.config.error(
                    key, f"unknown plugin {name!r}{did_you_mean(name, PLUGINS)}",
                    f"Built-in plugins: {listing(PLUGINS)}",
                )
            self.check_params(cls.__init__, params, list(inspect.signature(cls).parameters),
                              f"{key}.{name}", name)
            try:
                plugins.append(cls(**params))
            except (TypeError, ValueError) as exc:
                raise self.config.error(key, f"cannot make {name}: {exc}") from None
        return plugins


