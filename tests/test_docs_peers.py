"""docs/peers.md: its recipes match the peers' current command lines (re-run by hand against the simulator,
see the dates there), and its tokenizer advice holds: a word-level vocabulary drops the words it never saw."""

import re
from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parents[1] / "docs/peers.md").read_text()


def _commands(tool: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC, flags=re.S)
    joined = [b.replace("\\\n", " ") for b in blocks]
    return [line for b in joined for line in b.splitlines() if re.search(rf"\b{tool}\b", line)]


def test_guidellm_uses_the_run_command_with_kind_options():
    cmds = [c for c in _commands("guidellm") if "guidellm run" in c or "guidellm benchmark" in c]
    assert cmds and all("guidellm run" in c for c in cmds)  # 0.8 has no `benchmark` command
    for c in cmds:
        for opt in ("--backend kind=openai_http", "--profile kind=concurrent,streams=", "--tokenizer kind=",
                    "--data kind=synthetic_text,prompt_tokens=", "--constraint kind=max_requests,count="):
            assert opt in c, opt


def test_python_blocks_compile():
    for block in re.findall(r"```python\n(.*?)```", DOC, flags=re.S):
        compile(block, "docs/peers.md", "exec")


def test_a_word_level_vocabulary_drops_unseen_words_and_keeps_seen_ones(tmp_path):
    tk = pytest.importorskip("tokenizers")
    seen = "alpha beta gamma delta " * 50
    other = "alpha omega beta sigma gamma tau " * 10  # half of these words were never in the corpus

    def train(text):
        (tmp_path / "c.txt").write_text(text)
        tok = tk.Tokenizer(tk.models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
        tok.decoder = tk.decoders.WordPiece()
        tok.train([str(tmp_path / "c.txt")], tk.trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
        return tok

    n = 40
    for corpus, words in ((seen, n // 2), (other, n)):  # as GuideLLM does: encode, cut at n, decode
        tok = train(corpus)
        ids = tok.encode(other).ids[:n]
        assert len(tok.decode(ids, skip_special_tokens=True).split()) == words
