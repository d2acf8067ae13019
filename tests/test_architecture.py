"""The import contract of ARCHITECTURE.md, checked on the source (no import is executed).

Every `import` counts, at the top of a module or inside a function (a deferred import is
still a dependency; hiding one in a function is how the old cycles went unnoticed). The
root `danlu/__init__.py` is left out: it is the lazy public API (`danlu.train`,
`danlu.generate`, ...) and sits above everything. Run on its own with
`python -m pytest tests/test_architecture.py` (`make lint` does).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "danlu"

# the layered core shared by every kind of input
CORE = (
    "danlu.data",
    "danlu.models",
    "danlu.tasks",
    "danlu.training",
    "danlu.evaluation",
    "danlu.config",
    "danlu.templates",  # the `danlu init` templates config.py validates against
    "danlu.registry",
    "danlu.kinds",  # the Kind hook object; its hooks name modules of every layer as strings
    "danlu.run",
    "danlu.errors",
    "danlu.fileio",
    "danlu.datasets",  # named public datasets, resolved when a config is loaded
    "danlu.hub",  # model references -> local folders (paths, pkg://, hub ids)
)
# entry points and applications over a run folder: nothing in the core imports them
ABOVE_CORE = (
    "danlu.cli",
    "danlu.api",
    "danlu.tuning",
    "danlu.predict",
    "danlu.finish",
    "danlu.export",
    "danlu.explain",  # `danlu explain`: attributions over a run folder
    "danlu.onnx",  # ONNX export and the onnxruntime predictor (danlu/onnx/)
    "danlu.serve",  # `danlu serve`: the HTTP server over predict, lm/ and speech/
)
# domain packages above the core: language models (danlu/lm/), speech (danlu/speech/) and
# recommendation (danlu/recommend/)
DOMAINS = (
    "danlu.lm",
    "danlu.speech",
    "danlu.recommend",
)
# what models/ may never import: they are nn.Modules, built from a config and a schema
NOT_FROM_MODELS = ("danlu.predict", "danlu.tasks", "danlu.run", "danlu.api", *ABOVE_CORE)


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """`danlu.data.frames.Prepared` -> the module `danlu.data.frames`."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the danlu modules it imports anywhere in its source."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        if m == "danlu":
            continue
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package upwards
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                names = [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, mods) if name.split(".")[0] == "danlu" else None
                if target and target != m:
                    graph[m].add(target)
    return graph


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _edges(graph: dict[str, set[str]], src: tuple[str, ...], dst: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() if _in(a, src) for b in targets if _in(b, dst)}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_checker_sees_imports_inside_functions(graph: dict[str, set[str]]) -> None:
    # cli.py imports danlu.onnx.runtime (which picks torch's or onnxruntime's predictor) only
    # inside predict(): it must still be an edge, and `from danlu import models` must resolve
    # to the package danlu.models
    assert "danlu.onnx.runtime" in graph["danlu.cli"]
    assert "danlu.models" in graph["danlu.api"]
    assert graph["danlu.data"] >= {"danlu.data.frames", "danlu.data.sequences"}


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_core_never_imports_entry_points_or_applications(graph: dict[str, set[str]]) -> None:
    assert _edges(graph, CORE, ABOVE_CORE) == set()


def test_models_never_import_tasks_runs_or_applications(graph: dict[str, set[str]]) -> None:
    assert _edges(graph, ("danlu.models",), NOT_FROM_MODELS) == set()


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    # a new top-level module must be placed in one of the lists above (and in ARCHITECTURE.md)
    entry = ("danlu", "danlu.__main__")
    unplaced = [m for m in graph if not _in(m, CORE + ABOVE_CORE + DOMAINS) and m not in entry]
    assert unplaced == []


def test_the_gpt_model_file_stands_alone(graph: dict[str, set[str]]) -> None:
    # danlu/lm/model.py reads like nanoGPT's model.py: the decoding-speed path (lm/cpu/) and
    # the Hugging Face conversion (lm/hf.py) are installed onto or built around it, never imported
    assert graph["danlu.lm.model"] <= {"danlu.errors"}
    # so does the Llama family's (its KVCache and mask are GPT's; conversion is lm/llama_hf.py)
    assert graph["danlu.lm.llama"] <= {"danlu.errors", "danlu.lm.model"}
    # the model-reference module stays light: no danlu module that pulls in torch
    assert graph["danlu.hub"] <= {"danlu.errors"}


def test_domains_are_reached_from_the_core_only_through_registry_strings(graph: dict[str, set[str]]) -> None:
    # the core names danlu/lm/ and danlu/speech/ by "module:attr" strings (registry entries:
    # models, the ctc loss, the corpus and audio kinds, their tasks), imported on first use;
    # every one resolves into its package
    import danlu.config  # noqa: F401  (fills registry.MODELS from the model-type table)
    from danlu import registry
    from danlu.kinds import Kind

    assert _edges(graph, CORE, DOMAINS) == set()
    refs = {
        "gpt": registry.MODELS._entries["gpt"],
        **{n: registry.MODELS._entries[n] for n in ("ctc", "audio_cnn", "wav2vec2_ctc")},
        "ctc loss": registry.LOSSES._entries["ctc"],
        "corpus": registry.KINDS._entries["corpus"],
        "audio": registry.KINDS._entries["audio"],
        "language_modeling": registry.TASKS._entries["language_modeling"],
        "speech_recognition": registry.TASKS._entries["speech_recognition"],
        **{n: registry.MODELS._entries[n] for n in ("popularity", "ease", "mf", "bpr")},
        "interactions": registry.KINDS._entries["interactions"],
        "recommendation": registry.TASKS._entries["recommendation"],
    }
    for name, ref in refs.items():
        if isinstance(ref, str):
            module = ref.partition(":")[0]
        elif isinstance(ref, Kind):  # already resolved: the kind object, built where its hooks are
            module = ref.hook("prepare").__module__
        else:
            module = ref.__module__
        assert module.startswith(("danlu.lm.", "danlu.speech.", "danlu.recommend.")), (name, ref)
        if isinstance(ref, str):  # not yet imported by an earlier test
            assert module in graph, (name, ref)
            assert registry.import_object(ref) is not None
