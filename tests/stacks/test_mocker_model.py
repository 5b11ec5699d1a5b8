"""The shipped tokenizer directory of the Dynamo mocker stacks is what kvharness.stacks.mocker_model writes,
and it keeps the token contract the load generator relies on."""

import json

import pytest

from kvharness.loadgen.workloads import VOCAB, Corpus, id_words
from kvharness.stacks import mocker_model

tokenizers = pytest.importorskip("tokenizers")


def test_shipped_directory_is_what_the_generator_writes(tmp_path):
    fresh = mocker_model.write(tmp_path / "m")
    for name in ("tokenizer_config.json", "config.json"):
        assert json.loads((fresh / name).read_text()) == json.loads((mocker_model.MODEL_DIR / name).read_text())
    vocab = lambda d: json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab(fresh) == vocab(mocker_model.MODEL_DIR)


def test_one_word_one_token_and_the_mockers_output_ids_round_trip():
    tok = tokenizers.Tokenizer.from_file(str(mocker_model.MODEL_DIR / "tokenizer.json"))
    text = " ".join(id_words(123456, 6)) + " " + Corpus(7).words(500)
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) == len(text.split()) and 0 not in ids           # no <unk>: distinct prompts stay distinct
    assert len(set(tok.encode(" ".join(VOCAB)).ids)) == len(VOCAB)
    out = list(range(1000, 2000))                                     # what the mocker emits
    assert tok.encode(tok.decode(out), add_special_tokens=False).ids == out
    assert tok.get_vocab_size() >= 2000
