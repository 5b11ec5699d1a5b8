"""The model directory Dynamo's mocker engine reads its tokenizer from (no hub access needed).

The mocker (``python -m dynamo.mocker``) simulates the engine but tokenizes real text: the frontend and
the mocker load ``tokenizer.json`` from ``--model-path``. This directory holds a word-level tokenizer
whose vocabulary is

* the special tokens (``<unk>``, ``<s>``, ``</s>``),
* every word the load generator writes (``kvharness.loadgen.workloads.VOCAB``), so one prompt word is one
  token (the token contract the simulator also keeps) and distinct prompts stay distinct token sequences
  (prefix caching hashes token ids: unknown words would all become ``<unk>`` and every prompt would hit),
* filler words ``w<id>`` up to VOCAB_SIZE ids: the mocker emits output ids 1000-1999, which must decode to
  words that tokenize back to the same ids (a chat turn resends the reply as history).

The directory is shipped in the package (``mocker_model/``); ``python -m kvharness.stacks.mocker_model
DIR`` writes it again (needs the ``tokenizers`` package) and ``tests/stacks/test_mocker_model.py`` checks
that the shipped copy is what this module writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvharness.loadgen.workloads import VOCAB

MODEL_DIR = Path(__file__).with_name("mocker_model")
SPECIALS = ("<unk>", "<s>", "</s>")
VOCAB_SIZE = 4096  # > 2000: the mocker's output ids (1000-1999) are all words
#: a chat template that only concatenates contents: a conversation's prompt is a prefix of the next turn's
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def vocabulary() -> dict[str, int]:
    words = list(SPECIALS) + list(VOCAB)
    words += [f"w{i}" for i in range(len(words), VOCAB_SIZE)]
    return {w: i for i, w in enumerate(words)}


def write(target: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    target.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(vocabulary(), unk_token=SPECIALS[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with single spaces
    tok.save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": SPECIALS[0], "bos_token": SPECIALS[1],
        "eos_token": SPECIALS[2], "model_max_length": 131072, "chat_template": CHAT_TEMPLATE}, indent=1) + "\n")
    # only what the frontend's model card reads; the mocker's engine model never looks at the layers
    (target / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 131072, "bos_token_id": 1, "eos_token_id": 2}, indent=1) + "\n")
    return target


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL_DIR))
