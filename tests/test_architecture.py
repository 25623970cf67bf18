"""The layout is the architecture: no package imports from a layer above its own, and no module
outside ``lorabench/variants`` decides anything by a variant's name.

Layers, bottom to top (docs/ARCHITECTURE.md): registry and models; variants; tasks and testing;
results; harness; search; reports; regress; cli.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lorabench"
LAYERS = {
    "registry": 0,
    "models": 0,
    "interrupts": 0,
    "variants": 1,
    "tasks": 2,
    "integrations": 2,
    "testing": 2,
    "results": 3,
    "harness": 4,
    "search": 5,
    "reports": 6,
    "regress": 7,
    "cli": 8,
    "presets": 8,
}
BUILT_IN_VARIANTS = {
    "lora", "dora", "adalora", "vera", "dylora", "sora", "increlora", "full", "bitfit",
}  # fmt: skip
# Built-in names that are also common words, used elsewhere for other things (git's "HEAD" in
# results/provenance.py, the "head" label of a generated task's seed stream): a module names one
# of these as a variant when it *compares* a value with it (``variant == "head"``,
# ``name in ("head", ...)``), which is what deciding by a variant's name looks like.
COMMON_WORD_VARIANTS = {"head"}


def modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"
    )


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported_parts(tree: ast.AST) -> set[str]:
    """The lorabench sub-packages a module imports, at its top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "lorabench":
                names = [f"lorabench.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "lorabench" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_has_a_layer():
    parts = {part_of(p) for p in modules()}
    assert parts <= set(LAYERS), f"give {sorted(parts - set(LAYERS))} a layer here and in the docs"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = part_of(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    above = sorted(
        part for part in imported_parts(tree) if part in LAYERS and LAYERS[part] > LAYERS[own]
    )
    assert not above, f"{own} (layer {LAYERS[own]}) imports {above} from a layer above"


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if part_of(p) not in ("variants", "testing")],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_module_outside_variants_names_a_variant(path):
    """Facts about a variant (its display name, how its rank is labelled, whether its rank
    adapts) live on the variant class; reports, the regression and the harness read them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    named = sorted(
        {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.lower() in BUILT_IN_VARIANTS
        }
    )
    assert not named, f"{path.name} names variant(s) {named}"


def compared_strings(tree: ast.AST) -> set[str]:
    """String constants a module compares something with: either side of ``==``/``!=``/``in``
    and the like, or an element of a tuple, list or set on one side."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            items = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            found.update(
                item.value
                for item in items
                if isinstance(item, ast.Constant) and isinstance(item.value, str)
            )
    return found


@pytest.mark.parametrize(
    "path",
    [p for p in modules() if part_of(p) not in ("variants", "testing")],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_module_outside_variants_decides_by_a_common_word_variant_name(path):
    """The reference method ``head`` is named like many other things; comparing with its name
    outside lorabench/variants is deciding by it (read ``trains_head_only`` instead)."""
    named = sorted(
        compared_strings(ast.parse(path.read_text(encoding="utf-8"))) & COMMON_WORD_VARIANTS
    )
    assert not named, f"{path.name} compares with variant name(s) {named}"


def test_the_common_word_check_sees_a_comparison():
    """The check above is not vacuous: it finds a comparison with "head" in either form."""
    assert compared_strings(ast.parse('if v == "head" or w in ("x", "head"): pass')) == {
        "head",
        "x",
    }
    assert not compared_strings(ast.parse('label = "head"; f(seed, "head")'))
