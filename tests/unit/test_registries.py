"""Registries know their built-in names without importing them, and a config is checked before any
heavy import: a bad key, value, preset or registered name raises `ConfigError` with torch,
transformers and scikit-learn still unloaded (checked in a fresh interpreter). The timing itself is
measured in benchmarks/config_latency.py; these tests check the mechanism."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mitigate import registries
from mitigate.core.fields import ConfigError
from mitigate.core.registry import DuplicateName, Registry, UnknownName

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "sklearn", "scipy", "ot", "numpy")
ALL = {"objective": registries.OBJECTIVES, "regularizer": registries.REGULARIZERS, "task": registries.TASKS,
       "policy": registries.POLICIES, "embedder": registries.EMBEDDERS}


def fresh(code: str) -> dict:
    """Run `code` in a new interpreter; it prints one JSON line, returned."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


BAD = [
    ["train.steps=-1"], ["train.lr=abc"], ["eval.samples=0"], ["train.lrr=1"],
    ["train.objective.name=sdsd_marginl"], ["train.regularizers=[{name: entropyy, coef: 0.1}]"], ["task.name=grap"],
    ["model.name=tiny_gtp"], ["eval.embedder=tfidff"], ["seed=-1"], ["device=gpu"],
    ["train.objective={name: sdsd, teacher: ema}", "train.prompts_per_step=0"],
]


@pytest.mark.parametrize("overrides", BAD, ids=lambda o: o[-1])
def test_a_bad_config_is_refused_before_any_heavy_import(overrides):
    got = fresh(f"""
import json, sys
from mitigate import config as C
try:
    C.load(preset="smoke", overrides={overrides!r})
    print(json.dumps({{"error": None}}))
except C.ConfigError as e:
    print(json.dumps({{"error": str(e), "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
""")
    assert got["error"], overrides
    assert got["loaded"] == [], got


def test_a_misspelt_name_says_the_closest_and_the_registered_list_without_importing():
    got = fresh("""
import json, sys
from mitigate import config as C
try:
    C.load(preset="smoke", overrides=["train.objective.name=sdsd_marginl"])
except C.ConfigError as e:
    print(json.dumps({"error": str(e), "torch": "torch" in sys.modules}))
""")
    assert "did you mean 'sdsd_marginal'?" in got["error"] and "registered: grpo," in got["error"]
    assert not got["torch"]


def test_an_unknown_preset_and_eval_and_audit_overrides_are_refused_through_the_cli_before_torch(tmp_path):
    out = tmp_path / "never-written"
    got = fresh(f"""
import json, sys
from mitigate import cli
audit = ["audit", "--base", "x", "--model", "y", "--out", "{out}"]
codes = [cli.main(["train", "--preset", "smok", "--init", "x", "--out", "{out}"]),
         cli.main(["sweep", "baselines/ablations/entropy.yaml", "--set", "train.lr=abc", "--out", "{out}"]),
         cli.main(["eval", "--ckpt", "x", "--out", "{out}.json", "--set", "eval.samples=0"]),
         cli.main([*audit, "--set", "train.objective.name=grpoo"]),
         cli.main([*audit, "--preset", "smok"])]
print(json.dumps({{"codes": codes, "torch": "torch" in sys.modules}}))
""")
    assert got == {"codes": [2, 2, 2, 2, 2], "torch": False}
    assert list(tmp_path.iterdir()) == []


def test_a_good_config_still_builds_its_registered_sections():
    from mitigate import config as C

    cfg = C.load(preset="smoke", overrides=["train.objective={name: sdsd_marginal}",
                                            "train.regularizers=[{name: entropy, coef: 0.1}]"])
    assert type(cfg.train.objective).__name__ == "SDSDMarginalConfig"
    assert type(cfg.train.regularizers[0]).__name__ == "EntropyConfig"
    with pytest.raises(ConfigError, match="coef"):  # fields inside a registered section: the second pass
        C.load(preset="smoke", overrides=["train.regularizers=[{name: entropy, coef: -1}]"])


@pytest.mark.parametrize("kind", sorted(ALL))
def test_the_manifest_names_the_module_that_registers_each_builtin(kind):
    registry = ALL[kind]
    for name, module in registry.builtins().items():
        entry = registry.get(name)  # imports `module`
        assert entry.target.__module__ == module or entry.target.__module__.startswith(f"{module}."), (name, module)


def registrations() -> dict[str, set[str]]:
    """kind -> names registered by a decorator in the package's source (`@register_KIND("name", ...)`)."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / "mitigate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith(
                    "register_") and node.args and isinstance(node.args[0], ast.Constant):
                out.setdefault(node.func.id.removeprefix("register_"), set()).add(node.args[0].value)
    return out


def test_every_builtin_registration_is_in_a_manifest():
    found = registrations()
    assert set(found) == set(ALL)
    for kind, names in found.items():
        assert names == set(ALL[kind].builtins()), kind


def test_a_lazy_registry_imports_a_module_only_for_its_entry():
    registry = Registry("thing", "json", {"decoder": "decoder"})
    assert registry.names() == ["decoder"] and "decoder" in registry and not registry.loaded("decoder")
    with pytest.raises(UnknownName, match="did you mean 'decoder'"):
        registry.check("decodr", "x.name")
    with pytest.raises(RuntimeError, match="out of date"):  # json.decoder registers nothing here
        registry.get("decoder")


def test_a_builtin_name_is_refused_to_another_module_before_the_builtin_is_imported():
    registry = Registry("thing", "json", {"decoder": "decoder"})

    def mine():
        pass

    with pytest.raises(DuplicateName, match="already registered by json.decoder"):
        registry.register("decoder")(mine)
    registry.register("other")(mine)
    assert registry.names() == ["decoder", "other"] and registry.get("other").target is mine
