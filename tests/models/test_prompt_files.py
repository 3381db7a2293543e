"""Prompt files: parsing, the held-out split, and the errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from spotlight.models.batches import FILE_KIND, file_prompt_set, read_prompt_file


def test_lines_comments_blanks_and_duplicates(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text('# header\n\n  a sign that says "OPEN"  \nb\n# b\na sign that says "OPEN"\nc\n')
    assert read_prompt_file(f) == ['a sign that says "OPEN"', "b", "c"]


def test_the_split_holds_out_a_seeded_tenth_and_never_trains_on_it(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    prompts = [f"prompt {i}" for i in range(50)]
    f.write_text("\n".join(prompts))
    s = file_prompt_set(f, n_val=3, n_seeds=2)
    train = s.train_by_kind[FILE_KIND]
    assert len(s.val_prompts) == 3 and len(train) == 45  # 5 held out, 3 of them validate
    assert not set(train) & set(s.val_prompts) and set(train) | set(s.val_prompts) <= set(prompts)
    assert s.val_seeds[0] != s.val_seeds[1]
    assert file_prompt_set(f, n_val=3, n_seeds=2) == s
    assert file_prompt_set(f, n_val=3, n_seeds=2, seed=1).val_prompts != s.val_prompts
    fit = file_prompt_set(f, n_val=3, n_seeds=2, fit_validation=True)
    assert fit.train_by_kind[FILE_KIND] == fit.val_prompts
    two = tmp_path / "two.txt"
    two.write_text("x\ny\n")
    s2 = file_prompt_set(two, n_val=5, n_seeds=1)
    assert len(s2.val_prompts) == 1 and len(s2.train_by_kind[FILE_KIND]) == 1


def test_unusable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"prompt file .*missing.txt does not exist"):
        read_prompt_file(tmp_path / "missing.txt")
    one = tmp_path / "one.txt"
    one.write_text("# only\nx\nx\n")
    with pytest.raises(ValueError, match=r"1 distinct prompt.*at least 2"):
        read_prompt_file(one)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00x")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_prompt_file(binary)
