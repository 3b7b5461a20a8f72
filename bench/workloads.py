"""Workload definitions shared by every system, and the calibrated CPU step.

Only the standard library is imported at module level: this module is also loaded by the
crystallize-ml reference interpreter, which has none of this project's dependencies.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

# Set by the harness for the timed half of W4: any unit that still executes then fails,
# which turns "resume skipped everything" from an assumption into a checked fact.
FORBID_ENV = "BENCH_FORBID_UNIT_RUN"

GROUPS = ("W1", "W2", "W3", "W4", "W5", "W6")


@dataclass(frozen=True)
class Node:
    name: str
    parents: tuple[str, ...] = ()
    replicates: int = 1


@dataclass(frozen=True)
class Workload:
    key: str
    group: str
    title: str
    nodes: tuple[Node, ...]  # topological order
    unit_ms: float  # nominal CPU per unit; 0 means a trivial step
    iters: int  # iterations of cpu_work per unit, the same for every system
    artifacts: bool  # each unit writes one small artifact
    sleep_s: float = 0.0  # W6: each unit awaits this instead of computing
    resume: bool = False  # W4: time a second, fresh process that resumes the stored graph
    per: str = "unit"  # what the overhead column is divided by: "unit" or "node"
    headline: str = "ratio"  # "ratio" (wall / ideal) or "ms" (overhead ms per `per`)

    @property
    def units(self) -> int:
        return sum(n.replicates for n in self.nodes)

    @property
    def per_count(self) -> int:
        return self.units if self.per == "unit" else len(self.nodes)

    @property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def critical_path_s(self) -> float:
        """Longest dependency chain of nominal unit times: the floor no core count beats."""
        per_unit = self.unit_ms / 1000 + self.sleep_s
        depth: dict[str, int] = {}
        for n in self.nodes:
            depth[n.name] = 1 + max((depth[p] for p in n.parents), default=0)
        return per_unit * max(depth.values(), default=0)


def unit_inputs(w: Workload, node: Node, rep: int) -> list[tuple[str, int]]:
    """(upstream node, upstream replicate) pairs a unit reads: replicate r % upstream's."""
    nodes = w.by_name
    return [(p, rep % nodes[p].replicates) for p in node.parents]


def levels(w: Workload) -> list[list[Node]]:
    """Nodes grouped by depth, for systems that run level by level."""
    depth: dict[str, int] = {}
    out: list[list[Node]] = []
    for n in w.nodes:
        d = 1 + max((depth[p] for p in n.parents), default=-1)
        depth[n.name] = d
        if d == len(out):
            out.append([])
        out[d].append(n)
    return out


# --------------------------------------------------------------------------- CPU step


def cpu_work(iters: int) -> int:
    x = 0
    for i in range(iters):
        x += i * i % 7
    return x


def calibrate(samples: int = 7, probe: int = 300_000) -> float:
    """Iterations of cpu_work per millisecond of thread CPU time on this machine.

    The minimum over samples is used because interference on a shared machine only ever
    makes a sample slower.
    """
    best = math.inf
    for _ in range(samples):
        t0 = time.thread_time()
        cpu_work(probe)
        best = min(best, time.thread_time() - t0)
    return probe / max(best * 1000, 1e-6)


def unit_body(iters: int, inputs: Sequence[bytes]) -> tuple[bytes, float]:
    """The step every system runs: check inputs, burn `iters`, return (payload, CPU s)."""
    if os.environ.get(FORBID_ENV):
        raise RuntimeError("a unit executed during a resume measurement")
    for blob in inputs:
        if not isinstance(blob, bytes) or not blob:
            raise ValueError(f"unit received an empty or non-bytes input: {blob!r}")
    t0 = time.thread_time()
    x = cpu_work(iters)
    cpu = time.thread_time() - t0
    return b"%d:%d" % (x, sum(len(b) for b in inputs)), cpu


async def sleep_body(seconds: float) -> float:
    import anyio  # only W6 needs it, and the reference interpreter installs it alongside

    await anyio.sleep(seconds)
    return 0.0


# ------------------------------------------------------- plain-file store (non-crystallize)


def artifact_path(data_dir: str, node: str, rep: int) -> str:
    return os.path.join(data_dir, node, f"{rep}.bin")


def file_unit(
    data_dir: str, node: str, rep: int, iters: int, inputs: Sequence[tuple[str, int]], write: bool
) -> float:
    """One unit for the systems without a store: read upstream files, compute, write a file."""
    blobs = []
    for parent, prep in inputs:
        with open(artifact_path(data_dir, parent, prep), "rb") as f:
            blobs.append(f.read())
    payload, cpu = unit_body(iters, blobs)
    if write:
        os.makedirs(os.path.join(data_dir, node), exist_ok=True)
        with open(artifact_path(data_dir, node, rep), "wb") as f:
            f.write(payload)
    return cpu


# ------------------------------------------------------------------------ definitions


@dataclass(frozen=True)
class Sizes:
    w1_children: int
    w1_replicates: int
    w1_ms: float
    w2_nodes: int
    w3_replicates: int
    w3_ms: float
    w3_tiny_replicates: int
    w5_nodes: tuple[int, int]
    w6_replicates: int


FULL = Sizes(16, 4, 50.0, 200, 64, 20.0, 2000, (200, 2000), 200)
QUICK = Sizes(4, 2, 5.0, 20, 8, 5.0, 20, (20, 50), 10)
#: W3-tiny, beyond BENCH.md: replicates far shorter than a trip to a worker process.
W3_TINY_MS = 1.0
W6_SLEEP_S = 0.05
W5_SEED = 20240517


def _wide(children: int, reps: int) -> tuple[Node, ...]:
    kids = tuple(Node(f"child{i:02d}", ("root",), reps) for i in range(children))
    return (Node("root", (), reps), *kids, Node("sink", tuple(k.name for k in kids), reps))


def _chain(n: int) -> tuple[Node, ...]:
    return tuple(Node(f"n{i:04d}", (f"n{i - 1:04d}",) if i else ()) for i in range(n))


def _fan(n: int) -> tuple[Node, ...]:
    return (Node("root"), *(Node(f"leaf{i:04d}", ("root",)) for i in range(1, n)))


def _random_dag(n: int, seed: int) -> tuple[Node, ...]:
    # Every node after the first has 1–3 parents, so the DAG is connected (crystallize-ml
    # rejects graphs with several components) and fan-in stays bounded.
    rng = random.Random(seed)
    nodes = [Node("r0000")]
    for i in range(1, n):
        k = rng.randint(1, min(3, i))
        parents = sorted(rng.sample(range(i), k))
        nodes.append(Node(f"r{i:04d}", tuple(f"r{p:04d}" for p in parents)))
    return tuple(nodes)


def build(quick: bool, iters_per_ms: float) -> dict[str, Workload]:
    s = QUICK if quick else FULL

    def iters(ms: float) -> int:
        return max(1, round(iters_per_ms * ms))

    w1_nodes = _wide(s.w1_children, s.w1_replicates)
    chain = _chain(s.w2_nodes)
    n_exp = len(w1_nodes)
    ws = [
        Workload(
            "W1", "W1",
            f"wide graph: root → {s.w1_children} children → sink, "
            f"{n_exp} exp × {s.w1_replicates} rep × {s.w1_ms:g} ms",
            w1_nodes, s.w1_ms, iters(s.w1_ms), True,
        ),
        Workload(
            "W2-chain", "W2", f"chain of {s.w2_nodes} tiny nodes",
            chain, 0.0, 0, True, per="node", headline="ms",
        ),
        Workload(
            "W2-fan", "W2", f"root → {s.w2_nodes - 1} tiny leaves",
            _fan(s.w2_nodes), 0.0, 0, True, per="node", headline="ms",
        ),
        Workload(
            "W3", "W3", f"one experiment, {s.w3_replicates} rep × {s.w3_ms:g} ms, metrics only",
            (Node("replicated", (), s.w3_replicates),), s.w3_ms, iters(s.w3_ms), False,
        ),
        Workload(
            "W3-tiny", "W3",
            f"one experiment, {s.w3_tiny_replicates} rep × {W3_TINY_MS:g} ms, metrics only",
            (Node("replicated", (), s.w3_tiny_replicates),), W3_TINY_MS, iters(W3_TINY_MS),
            False,
        ),
        Workload(
            "W4-W1", "W4", f"resume of W1 ({n_exp} nodes)",
            w1_nodes, s.w1_ms, iters(s.w1_ms), True, resume=True, per="node", headline="ms",
        ),
        Workload(
            "W4-chain", "W4", f"resume of W2 chain ({s.w2_nodes} nodes)",
            chain, 0.0, 0, True, resume=True, per="node", headline="ms",
        ),
        *(
            Workload(
                f"W5-{n}", "W5", f"random DAG, {n} tiny nodes, fan-in ≤ 3",
                _random_dag(n, W5_SEED), 0.0, 0, True, per="node", headline="ms",
            )
            for n in s.w5_nodes
        ),
        Workload(
            "W6", "W6", f"{s.w6_replicates} rep of async anyio.sleep({W6_SLEEP_S:g})",
            (Node("async_io", (), s.w6_replicates),), 0.0, 0, False, sleep_s=W6_SLEEP_S,
        ),
    ]
    return {w.key: w for w in ws}


def select(all_workloads: dict[str, Workload], spec: str | None) -> list[Workload]:
    """`W2` selects every W2 shape; `W2-fan` selects one."""
    if not spec:
        return list(all_workloads.values())
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [
        s for s in wanted if s not in GROUPS and s not in all_workloads
    ]
    if unknown:
        raise SystemExit(
            f"unknown workload(s) {', '.join(unknown)}; choose from "
            f"{', '.join(GROUPS)} or {', '.join(all_workloads)}"
        )
    return [w for w in all_workloads.values() if w.group in wanted or w.key in wanted]
