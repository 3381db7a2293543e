"""The base that ships in the package loads, matches its card, and refuses to be used when not."""

from __future__ import annotations

import json
import shutil

import pytest

from spotlight.models import shipped
from spotlight.models.base_build import ensure_base
from spotlight.models.bases import load_checkpoint
from spotlight.models.checkpoint import WEIGHTS_FILE, read_card
from spotlight.models.dit import get_config


def test_shipped_base_loads_and_matches_its_card():
    path = ensure_base()
    assert path == shipped.SHIPPED_BASE_DIR
    card = read_card(path)
    assert card.config == get_config("tiny-latent")
    assert card.val_score is not None and card.metrics["rebuild_command"].startswith("spotlight")
    assert card.metrics["sha256"][WEIGHTS_FILE] == shipped.file_sha256(path / WEIGHTS_FILE)
    policy, _ = load_checkpoint(path)
    assert policy.config.vae == "tiny-scenes"


def test_shipped_files_fit_the_size_budget():
    total = sum(f.stat().st_size for f in shipped.SHIPPED_BASE_DIR.parent.rglob("*") if f.is_file())
    assert total <= 20 * 2**20


@pytest.fixture
def copy_of_base(tmp_path):
    dst = tmp_path / "base"
    shutil.copytree(shipped.SHIPPED_BASE_DIR, dst)
    return dst


def test_corrupt_weights_are_refused_with_the_rebuild_command(copy_of_base):
    with (copy_of_base / WEIGHTS_FILE).open("r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(shipped.ShippedBaseError, match="spotlight pretrain"):
        shipped.shipped_base(copy_of_base)


def test_missing_base_is_refused_with_the_rebuild_command(tmp_path):
    with pytest.raises(shipped.ShippedBaseError, match="git checkout -- spotlight/assets"):
        shipped.shipped_base(tmp_path / "nowhere")


def test_card_of_another_config_is_refused(copy_of_base):
    card_path = copy_of_base / "card.json"
    data = json.loads(card_path.read_text())
    data["config"]["num_layers"] += 1
    card_path.write_text(json.dumps(data))
    with pytest.raises(shipped.ShippedBaseError, match="code now defines"):
        shipped.shipped_base(copy_of_base)


def test_card_without_hashes_is_refused(copy_of_base):
    card_path = copy_of_base / "card.json"
    data = json.loads(card_path.read_text())
    del data["metrics"]["sha256"]
    card_path.write_text(json.dumps(data))
    with pytest.raises(shipped.ShippedBaseError, match="no file hashes"):
        shipped.shipped_base(copy_of_base)
