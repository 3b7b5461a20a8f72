"""Run the producer -> consumer example graph and print its results.

From the repository root: ``python examples/run_dag.py`` (the stored runs go to ``data/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    from crystallize import ExperimentGraph
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent))
    from crystallize import ExperimentGraph


def main() -> None:
    graph = ExperimentGraph.from_yaml(HERE / "dag" / "consumer" / "config.yaml")
    results = graph.run()
    for name, result in results.items():
        how = "executed" if result.executed else "resumed"
        print(f"{name}: {how}, v{result.version}")
        for condition in result.conditions:
            metrics = result.metrics.condition(condition).metrics
            print(f"  {condition}: {metrics}")
    hypothesis = results["consumer"].get_hypothesis("doubling_changes_score")
    if hypothesis is not None:
        print(f"hypothesis {hypothesis.name}: {hypothesis.results}")


if __name__ == "__main__":
    main()
