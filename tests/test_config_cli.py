"""`spotlight config show|schema|docs`, the shipped presets, and docs/configuration.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spotlight.cli import main
from spotlight.config import ConfigError, SystemConfig, load_config, read_file
from spotlight.config.describe import describe
from spotlight.config.presets import preset_names
from spotlight.config.reference import markdown_reference
from spotlight.config.schema import json_schema

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths inside configs (the OCR prompt file) are relative to where a run starts."""
    monkeypatch.chdir(REPO)


def test_every_key_has_a_doc_a_default_and_a_type() -> None:
    rows = describe()
    assert len(rows) == len({r.key for r in rows}) > 50
    undocumented = [r.key for r in rows if len(r.doc) < 10]
    assert undocumented == [], f"document these fields where they are declared: {undocumented}"
    assert {r.section for r in rows} == set(SystemConfig().to_dict())


def test_presets_ship_as_files_and_load_by_name() -> None:
    assert {"tiny-cpu", "qwen-image-lora-h100"} <= set(preset_names())
    for name in preset_names():
        load_config(name)  # every shipped preset is valid
    # tiny-cpu is the embedded default, the same as the repository's configs/default.yaml
    assert load_config("tiny-cpu") == SystemConfig() == load_config("configs/default.yaml")
    qwen = load_config("qwen-image-lora-h100", overrides=["run.iterations=7"])
    assert qwen.trainer.lora_rank > 0 and qwen.trainer.reward == "ocr"
    assert qwen.spot.pool == "external" and qwen.run.resume == "auto"
    assert qwen.run.iterations == 7
    with pytest.raises(ConfigError, match=r"no preset of that name; presets: .*tiny-cpu"):
        read_file("tiny-gpu")


def test_show_prints_a_config_that_loads_back_to_the_same_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = ["--set", "trainer.lr=3e-5", "--set", "spot.trace=none", "--set", "run.resume=auto"]
    assert main(["config", "show", "--config", "qwen-image-lora-h100", *sets]) == 0
    text = capsys.readouterr().out
    expected = load_config(
        "qwen-image-lora-h100", overrides=["trainer.lr=3e-5", "spot.trace=none", "run.resume=auto"]
    )
    (tmp_path / "shown.yaml").write_text(text)
    assert load_config(tmp_path / "shown.yaml") == expected
    # every key is there under its doc, with its default and a mark when it differs
    for row in describe(expected):
        assert f"\n  {row.key.split('.')[1]}: " in text, row.key
    assert "  # float; default 0.0001  (changed)\n  lr: 3.0e-05\n" in text
    assert "# Seeds per prompt (the planner's group size too)." in text
    assert text.startswith("# spotlight run configuration, resolved from: defaults < --config")


def test_show_json_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--json", "--set", "trainer.group_size=4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainer.group_size"]["value"] == 4 and out["trainer.group_size"]["default"] == 8
    assert out["spot.pool"]["type"] == "trace | external" and out["spot.pool"]["doc"]
    assert main(["config", "show", "--set", "trainer.lrr=1"]) == 2
    assert "unknown config key 'trainer.lrr'" in capsys.readouterr().err
    assert main(["config", "show", "--config", "nope"]) == 2
    assert "presets: " in capsys.readouterr().err


def test_the_schema_accepts_what_the_loader_accepts_and_rejects_misspellings(
    tmp_path: Path,
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    files = [REPO / "configs" / "default.yaml", *(tmp_path / n for n in preset_names())]
    for name in preset_names():
        (tmp_path / name).write_text(yaml.safe_dump(read_file(name)))
    for path in files:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], (path, errors[0].message if errors else "")
    for bad, message in (
        ({"trainer": {"lrr": 1.0}}, "Additional properties"),
        ({"spot": {"pool": "cloud"}}, "is not one of"),
        ({"run": {"iterations": "many"}}, "is not of type 'integer'"),
        ({"trackng": {}}, "Additional properties"),  # an unknown section
    ):
        errors = list(validator.iter_errors(bad))
        assert errors and message in errors[0].message, (bad, errors)
    # the schema's keys and defaults are the tree's
    keys = {f"{s}.{k}": v for s, sec in schema["properties"].items() for k, v in sec["properties"].items()}  # fmt: skip
    assert {k: v["default"] for k, v in keys.items()} == {r.key: r.default for r in describe()}


def test_schema_command_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "spotlight.schema.json"
    assert main(["config", "schema", "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(json_schema()))


def test_the_committed_reference_page_is_what_the_code_generates(tmp_path: Path) -> None:
    page = REPO / "docs" / "configuration.md"
    assert page.read_text() == markdown_reference(), (
        "docs/configuration.md drifted from spotlight/config/: regenerate it with "
        "`spotlight config docs --output docs/configuration.md`"
    )
    assert main(["config", "docs", "--check", str(page)]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(page.read_text().replace("Trainer iterations", "Iterations"))
    assert main(["config", "docs", "--check", str(stale)]) == 1
    for row in describe():
        assert f"| `{row.key}` |" in page.read_text(), row.key
