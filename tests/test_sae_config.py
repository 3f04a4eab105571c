"""SAEConfig: validation names the bad parameter; JSON round-trip; each architecture owns
its fields; the registry keeps config, base and io free of import cycles."""

import ast
import json
from pathlib import Path

import pytest

import bioviz.sae
from bioviz.sae import ARCHITECTURES, OptimConfig, SAEConfig, build_sae
from bioviz.sae.config import COMMON_FIELDS


def test_valid_config_round_trips_through_json():
    cfg = SAEConfig(
        architecture="matryoshka", d_in=8, d_sae=32, k=4, matryoshka_prefixes=[4, 16, 32],
        provenance={"model": "antiberty", "layer": "encoder.layer.3"}, training={"lr": 1e-3},
    ).validate()
    again = SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.provenance["layer"] == "encoder.layer.3"


def test_expansion_factor_helper_sets_d_sae():
    cfg = SAEConfig.from_expansion(d_in=12, expansion_factor=4, k=3)
    assert cfg.d_sae == 48
    assert SAEConfig(d_in=10, expansion_factor=1.5, k=2).validate().d_sae == 15


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(d_in=8, d_sae=16, k=17), ["k=17", "larger than d_sae=16"]),
        (dict(d_in=8, d_sae=16, k=0), ["k=0", ">= 1"]),
        (dict(d_in=10, expansion_factor=0.33, k=1), ["expansion_factor=0.33", "not an integer"]),
        (dict(d_in=8, d_sae=40, expansion_factor=4, k=1), ["d_sae=40", "expansion_factor=4"]),
        (dict(d_in=8, d_sae=16.0, k=1), ["d_sae=16.0", "positive integer"]),
        (dict(d_in=8, k=1), ["d_sae is missing"]),
        (dict(d_in=0, d_sae=16, k=1), ["d_in=0"]),
        (dict(architecture="matryoshka", d_in=8, d_sae=32, k=2, matryoshka_prefixes=[8, 4, 32]),
         ["matryoshka_prefixes", "increasing"]),
        (dict(architecture="matryoshka", d_in=8, d_sae=32, k=2, matryoshka_prefixes=[8, 16]),
         ["matryoshka_prefixes", "end at d_sae=32"]),
        (dict(architecture="relu", d_in=8, d_sae=16, l1_coefficient=-1.0), ["l1_coefficient"]),
        (dict(architecture="jumprelu", d_in=8, d_sae=16, jumprelu_bandwidth=0.0),
         ["jumprelu_bandwidth"]),
        (dict(d_in=8, d_sae=16, k=2, b_dec_init="median"), ["b_dec_init='median'"]),
        (dict(d_in=8, d_sae=16, k=2, provenance={"when": object()}), ["provenance"]),
    ],
)
def test_validation_errors_name_the_parameter(kwargs, words):
    with pytest.raises(ValueError) as err:
        SAEConfig(**kwargs).validate()
    for word in words:
        assert word in str(err.value)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_sae(SAEConfig(architecture="gated", d_in=8, d_sae=16))
    msg = str(err.value)
    assert "architecture='gated'" in msg
    for name in ARCHITECTURES:
        assert name in msg
    assert set(ARCHITECTURES) == {"topk", "batchtopk", "relu", "jumprelu", "matryoshka"}


def test_all_errors_reported_at_once():
    with pytest.raises(ValueError) as err:
        SAEConfig(d_in=8, d_sae=16, k=0, auxk_coefficient=-1).validate()
    assert "k=0" in str(err.value) and "auxk_coefficient" in str(err.value)


def test_k_does_not_matter_for_relu_and_default_prefixes_are_valid():
    SAEConfig(architecture="relu", d_in=8, d_sae=16, k=100).validate()
    cfg = SAEConfig(architecture="matryoshka", d_in=8, d_sae=64, k=2).validate()
    assert cfg.resolved_prefixes == [8, 16, 32, 64]


def test_each_architecture_owns_and_checks_its_fields():
    fields = set(SAEConfig.field_names())
    owned = set().union(*(cls.config_fields for cls in ARCHITECTURES.values()))
    assert owned | set(COMMON_FIELDS) == fields  # every field is common or some architecture's
    assert not owned & set(COMMON_FIELDS)
    assert "k" in ARCHITECTURES["matryoshka"].config_fields and "k" not in ARCHITECTURES["relu"].config_fields
    # a field is checked by the architectures that use it, and ignored by the others
    SAEConfig(architecture="topk", d_in=8, d_sae=16, k=2, l1_coefficient=-1.0).validate()
    with pytest.raises(ValueError, match="l1_coefficient=-1.0"):
        SAEConfig(architecture="relu", d_in=8, d_sae=16, l1_coefficient=-1.0).validate()
    with pytest.raises(ValueError, match="threshold_momentum=0"):
        SAEConfig(architecture="batchtopk", d_in=8, d_sae=16, k=2, threshold_momentum=0).validate()
    with pytest.raises(ValueError, match="l0_coefficient='a'"):
        SAEConfig(architecture="jumprelu", d_in=8, d_sae=16, l0_coefficient="a").validate()


def test_coerce_names_unknown_keys():
    assert SAEConfig.coerce({"k": 3}).k == 3 and SAEConfig.coerce(None) == SAEConfig()
    cfg = SAEConfig(k=5)
    assert SAEConfig.coerce(cfg) == cfg and SAEConfig.coerce(cfg) is not cfg
    with pytest.raises(ValueError, match=r"sae: unknown key\(s\) 'kk'; SAEConfig fields: architecture, d_in"):
        SAEConfig.coerce({"kk": 3})
    with pytest.raises(ValueError, match=r"'lr' is an OptimConfig field"):
        SAEConfig.coerce({"lr": 1e-3})
    with pytest.raises(ValueError, match=r"optim: unknown key\(s\) 'k'.*'k' is an SAEConfig field"):
        OptimConfig.coerce({"k": 3})
    with pytest.raises(ValueError, match="decay_fraction=2"):
        OptimConfig(decay_fraction=2).validate()


def _relative_imports(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules imported at module level, outside ``if TYPE_CHECKING``; those imported
    inside functions)."""
    tree = ast.parse(path.read_text())
    top, inner = set(), set()

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.level == 1:
                (inner if in_function else top).add(child.module)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return top, inner


def test_registry_breaks_the_import_cycle():
    folder = Path(bioviz.sae.__file__).parent
    core = ("registry", "config", "base", "io")
    graph = {}
    for name in core:
        top, inner = _relative_imports(folder / f"{name}.py")
        assert not inner & set(core), f"{name}.py imports {inner & set(core)} inside a function"
        graph[name] = top & set(core)
    assert graph["registry"] == set()  # the registry imports nothing from bioviz.sae
    assert "registry" in graph["config"] and "base" not in graph["config"] | graph["io"]
    order = []  # a topological order exists: no cycle
    while len(order) < len(core):
        ready = [n for n in core if n not in order and graph[n] <= set(order)]
        assert ready, f"import cycle among {sorted(set(core) - set(order))}"
        order += ready
