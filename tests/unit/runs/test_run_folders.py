from energy_cli.runs.folders import claim_folder


def test_claiming_a_taken_name_adds_a_counter(tmp_path):
    first = claim_folder(tmp_path / "eval", stamp="s")
    second = claim_folder(tmp_path / "eval", stamp="s")
    third = claim_folder(tmp_path / "eval", stamp="s")
    assert [p.name for p in (first, second, third)] == ["s", "s_1", "s_2"]
    assert all(p.is_dir() for p in (first, second, third))
