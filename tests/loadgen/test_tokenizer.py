"""The optional tokenizer: prompts fitted to a real (BPE) tokenizer's count, clear errors otherwise."""

import json

import pytest

from kvharness.loadgen.spec import SpecError, validate_spec
from kvharness.loadgen.workloads import VOCAB, make_workload

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def small_bpe(tmp_path_factory):
    """A byte-level BPE with a tiny vocabulary: many of the generator's words split into 2-4 tokens,
    so the one-word-one-token contract is far off and the fit has real work to do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(VOCAB[:40])] * 50, trainer=trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path), tok


def spec(path, endpoint="completions", n=500, **workload):
    return validate_spec({"model": "m", "endpoint": endpoint, "duration_s": 1, "tokenizer": path,
                          "pattern": {"kind": "closed", "concurrency": 1},
                          "workload": {"kind": "fixed_context", "context_tokens": n, "output_tokens": 4, **workload}})


def prompt_of(req) -> str:
    body = json.loads(req.body)
    return body["prompt"] if "prompt" in body else body["messages"][0]["content"]


@pytest.mark.parametrize("n", [64, 500, 2048])
def test_prompts_hit_the_tokenizers_count(small_bpe, n):
    path, tok = small_bpe
    w = make_workload(spec(path, n=n))
    untuned = make_workload(spec(None, n=n))
    for _ in range(5):
        req = w.build(None)
        count = len(tok.encode(prompt_of(req), add_special_tokens=False).ids)
        assert count == n  # words straddling n are topped up with a one-token filler
        assert req.labels["client_prompt_tokens"] == count
    # without the tokenizer the same request is far off: the fit is doing the work
    raw = len(tok.encode(prompt_of(untuned.build(None)), add_special_tokens=False).ids)
    assert raw > 1.2 * n


def test_chat_and_shared_prefix_are_fitted_too(small_bpe):
    path, tok = small_bpe
    w = make_workload(spec(path, endpoint="chat", n=800, shared_prefix_ratio=0.5, prefix_groups=2))
    req = w.build(None)
    count = len(tok.encode(prompt_of(req), add_special_tokens=False).ids)
    assert count == 799  # chat: "<user>" is the 800th token of the contract
    assert req.labels["prefix_group"] == 0


def test_tokenizer_errors_name_the_key(tmp_path):
    with pytest.raises(SpecError, match=r"tokenizer: .*no such file"):
        spec(str(tmp_path / "missing.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match=r"tokenizer: .* is not a readable tokenizer.json"):
        spec(str(bad))
