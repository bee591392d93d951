"""The package's layers point down: read from the source with ast (every import, function-local ones
included), no module imports a module of a higher layer, the top-level units import each other in
no cycle, evaluation does not import training, only the toy scale's own modules import the toy
world (the loop gets its true reward through `eval.true_reward`, selm.loop.TRUE_REWARDS), and the
report's rendering modules compute no statistic (the analyze stage does).

A new module must be placed in LAYERS; the failure says which one is missing.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "selm"

# Bottom to top. A unit is a top-level module of selm or a subpackage (all its modules).
LAYERS = [
    ("foundation: files, the run layout, configs, identities, the loss, worker processes, Slurm jobs", {
        "selm", "selm.io", "selm.layout", "selm.config", "selm.compose", "selm.determinism", "selm.provenance",
        "selm.checkpoints", "selm.tracking", "selm.losses", "selm.tiny", "selm.console", "selm.stagelog",
        "selm.workers", "selm.slurm"}),
    ("data: pairs and batches; the toy world", {"selm.data", "selm.world"}),
    ("parts: reference log-probs, decoding, generation, the trainer, rankers, judges, external artifacts", {
        "selm.logps", "selm.decode", "selm.generation", "selm.trainer", "selm.pairrm", "selm.rankers", "selm.judges",
        "selm.artifacts"}),
    ("recipes: one iteration, SFT, the loop, exports, evaluations, stand-ins", {
        "selm.train", "selm.sft", "selm.loop", "selm.evalstore", "selm.ultrafeedback", "selm.benchmarks",
        "selm.evaluate", "selm.standins", "selm.judge_server"}),
    ("orchestration: experiments, benchmarks (the stage-time table among them), the W&B workspace, the smoke runner, the cost", {
        "selm.experiments", "selm.bench", "selm.dashboard", "selm.smoke", "selm.cost"}),
    ("report: analyses, tables, figures", {"selm.report"}),
    ("entry points", {"selm.cli"}),
]
# Units that must not import each other in the given direction, though the layers would allow it.
APART = [({"selm.evaluate", "selm.benchmarks", "selm.judges"}, {"selm.train", "selm.trainer", "selm.loop"},
          "an evaluation runs on any checkpoint and needs no training code")]
# Who may import the toy world: the toy scale's own modules and the registries' toy entries.
# The report stage's modules render only: they import no module of the analyze stage and, from
# selm.report.stats, only formatters and constants, never a test or a verdict (those run in analyze).
RENDERING = {"selm.report.build", "selm.report.report_text", "selm.report.claims_text", "selm.report.figures",
             "selm.report.toy_table", "selm.report.eval_tables", "selm.report.spec"}
COMPUTING = {"selm.report.analyze", "selm.report.claims", "selm.report.comparison"}
VERDICT_FUNCTIONS = {"effect_verdict", "regime_verdict", "paired_test", "sample_test", "summary_diff", "mde", "mde_se",
                     "t95", "t_quantile"}
WORLD_IMPORTERS = {"selm.sft", "selm.bench.train", "selm.rankers", "selm.judges.oracle",
                   "selm.report.controls_analysis"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The selm modules (or names of them) `path` imports anywhere in its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(anchor + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return {m for m in found if m == "selm" or m.startswith("selm.")}


def unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of() -> dict[str, int]:
    return {u: i for i, (_, units) in enumerate(LAYERS) for u in units}


def unit_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for a, targets in modules.items():
        edges.setdefault(unit(a), set()).update(unit(b) for b in targets if unit(b) != unit(a))
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_every_module_has_a_layer():
    placed = layer_of()
    unplaced = sorted({unit(m) for m in graph()} - set(placed))
    assert not unplaced, f"place {unplaced} in tests/test_layers.py's LAYERS"


def test_no_module_imports_a_higher_layer():
    layer = layer_of()
    upward = [f"{a} ({LAYERS[layer[unit(a)]][0].split(':')[0]}) imports {b} ({LAYERS[layer[unit(b)]][0].split(':')[0]})"
              for a, targets in graph().items() for b in sorted(targets)
              if unit(b) in layer and unit(a) in layer and layer[unit(b)] > layer[unit(a)]]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_units_import_each_other_in_no_cycle():
    cycle = find_cycle(unit_graph(graph()))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_modules_import_each_other_in_no_cycle():
    modules = graph()
    known = set(modules)
    # `from selm.world import x` names the package; `from selm.world.build import x` the module
    edges = {a: {b if b in known else b.rpartition(".")[0] for b in targets} - {a} for a, targets in modules.items()}
    cycle = find_cycle(edges)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("importers, imported, why", APART)
def test_apart_units_do_not_import_each_other(importers, imported, why):
    found = [f"{a} imports {b}" for a, targets in graph().items() for b in sorted(targets)
             if unit(a) in importers and unit(b) in imported]
    assert not found, f"{why}: " + "; ".join(found)


def test_only_the_toy_scale_imports_the_toy_world():
    found = [f"{a} imports {b}" for a, targets in graph().items() for b in sorted(targets)
             if unit(b) == "selm.world" and unit(a) != "selm.world" and a not in WORLD_IMPORTERS]
    assert not found, "generic code reaches the toy world through a config hook, not an import: " + "; ".join(found)


def test_the_checks_find_what_they_look_for():
    """The cycle finder and the layer table on graphs with known answers."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    layer = layer_of()
    assert layer["selm.io"] < layer["selm.loop"] < layer["selm.experiments"] < layer["selm.report"] < layer["selm.cli"]
    assert imports(PACKAGE / "judges" / "openai_judge.py") >= {"selm.judges", "selm.judges.base"}


def rendering_imports(path: Path) -> list[str]:
    """What a rendering module imports that it must not: an analyze-stage module, selm.report.stats as a
    whole, or a test / verdict function from it (each as 'module.name')."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in COMPUTING | {"selm.report.stats"}]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in COMPUTING:
                found.append(node.module)
            elif node.module == "selm.report":
                found += [f"selm.report.{a.name}" for a in node.names if f"selm.report.{a.name}" in COMPUTING]
            elif node.module == "selm.report.stats":
                found += [f"selm.report.stats.{a.name}" for a in node.names if a.name in VERDICT_FUNCTIONS]
    return found


def test_the_report_stage_only_renders():
    """REPORT.md, the tables and the figures are rendered from the analysis files: no rendering module
    imports a test or verdict function (each verdict the report states is in analysis/claims.json)."""
    modules = graph()
    missing = sorted(RENDERING - set(modules))
    assert not missing, f"RENDERING names modules that do not exist: {missing}"
    found = [f"{m} imports {x}" for m in sorted(RENDERING) for x in
             rendering_imports(PACKAGE.parent / (m.replace(".", "/") + ".py"))]
    assert not found, "the report stage computes verdicts (move them to selm.report.claims): " + "; ".join(found)


def test_the_rendering_check_finds_a_verdict_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from selm.report.stats import fmt_mean_ci, effect_verdict\nfrom selm.report import claims, figures\n"
                    "import selm.report.stats\n")
    assert rendering_imports(path) == ["selm.report.stats.effect_verdict", "selm.report.claims", "selm.report.stats"]


def test_every_imported_selm_module_exists():
    """A module-level import of a missing module fails at import time, a function-local one only when
    the function runs (the training benchmark imported `selm.small` long after it had moved): every selm
    module named in an import, function-local ones included, is a file or package of src/selm."""
    def exists(module: str) -> bool:
        path = PACKAGE.parent.joinpath(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    missing = sorted(f"{importer} imports {m}" for importer, targets in graph().items() for m in targets
                     if not exists(m))
    assert not missing, "\n".join(missing)
