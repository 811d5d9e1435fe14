"""Data prep with a Hugging Face tokenizer id and no way to the Hub (issue 23 item 4): one
message saying the Hub cannot be reached and how to pass a local tokenizer directory, instead
of ~23 s of retries ending in "the repo has no tokenizer.json"."""
from __future__ import annotations

import huggingface_hub.constants as hf_constants

from tests.loopback import free_port
from trn_workloads.dataprep import tokenization
from trn_workloads.dataprep.cli import main as cli_main


def _hub_nowhere(monkeypatch, tmp_path):
    # A loopback port nothing listens on: the connect is refused at once, as with no network.
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_unreachable_hub_is_named_with_the_local_directory_fix(monkeypatch, tmp_path, capsys):
    _hub_nowhere(monkeypatch, tmp_path)
    assert tokenization.hub_unreachable(timeout=2).startswith("127.0.0.1: ")
    (tmp_path / "x.jsonl").write_text('{"text": "hello"}\n')
    rc = cli_main(["--tokenizer", "meta-llama/Llama-2-7b-hf", "--input", str(tmp_path / "x.jsonl"),
                   "--output-prefix", str(tmp_path / "out" / "corpus")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "the Hugging Face Hub cannot be reached from here (127.0.0.1: " in err
    assert "pass a local directory that holds tokenizer.json instead (--tokenizer /shared/tokenizers/Llama-2-7b-hf" in err
    assert "huggingface-cli download meta-llama/Llama-2-7b-hf tokenizer.json" in err
    assert "the repo has no tokenizer.json" not in err  # what it said before


def test_hf_hub_offline_reads_the_cache_only_and_says_so(monkeypatch, tmp_path):
    _hub_nowhere(monkeypatch, tmp_path)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert tokenization.hub_unreachable() == "HF_HUB_OFFLINE is set"
    try:
        tokenization.load_tokenizer("gpt2")
    except ValueError as err:
        assert "cannot be reached from here (HF_HUB_OFFLINE is set)" in str(err)
    else:
        raise AssertionError("an uncached tokenizer loaded with the Hub offline")
