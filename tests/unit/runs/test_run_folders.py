from energy_cli.runs.folders import claim_folder


def test_claiming_a_taken_name_adds_a_counter(tmp_path):
    first = claim_folder(tmp_path / "eval", stamp="s")
    second = claim_folder(tmp_path / "eval", stamp="s")
    third = claim_folder(tmp_path / "eval", stamp="s")
    assert [p.name for p in (first, second, third)] == ["s", "s_1", "s_2"]
    assert all(p.is_dir() for p in (first, second, third))


def test_a_stopped_run_says_what_it_wrote(tmp_path):
    import time

    from energy_cli.runs.folders import RunFolder, stopped_message

    folder = RunFolder("hydra.run.dir", tmp_path / "ev", created=[tmp_path / "ev"], started=time.time())
    folder.path.mkdir()
    assert stopped_message("SIGTERM", folder).endswith("nothing was written")
    (folder.path / "results.csv").write_text("dataset\n")
    message = stopped_message("SIGTERM", folder)
    assert "keeps what it wrote before: results.csv" in message and "nothing" not in message
