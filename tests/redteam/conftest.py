"""Fixtures of the red-team tests: a live gateway (fake backend) with an attacker account, a tiny tokenizer with a
chat template, and a tiny random Llama (a few hundred KB) that trains in a second."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from antidistill.redteam.data import Pair

MASTER_KEY = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")
SUBJECTS = ("cats", "rivers", "stars", "trees", "ships", "clouds", "roads", "bells")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``antidistill ARGV`` run in process."""
    from antidistill.cli import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@dataclass
class LiveGateway:
    """A running gateway: its URL, store, backend and the attacker's API key."""

    url: str
    store: Any
    backend: Any
    api_key: str
    account_id: str
    app: Any

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def make_gateway_app(tmp: Path, backend: Any = None, **account_limits: Any):
    """``(app, store, backend, api_key, account_id)``: the real gateway app over a SQLite store, fake backend."""
    from antidistill.gateway import create_app
    from antidistill.keys import KeyRing, MasterKey
    from antidistill.models.fake import FakeBackend
    from antidistill.settings import Settings
    from antidistill.store.sql import Store

    settings = Settings(env="test", data_dir=tmp, cache_dir=tmp / "cache", backend="fake", master_key=MASTER_KEY)
    store = Store.open(f"sqlite:///{tmp / 'gateway.db'}", settings=settings)
    backend = backend if backend is not None else FakeBackend()
    account, api_key, _ = store.create_account("attacker", **account_limits)
    app = create_app(settings, backend=backend, store=store, keyring=KeyRing(MasterKey.from_text(MASTER_KEY)))
    return app, store, backend, api_key, account.id


@pytest.fixture
def gateway(tmp_path) -> Iterator[LiveGateway]:
    """A fresh gateway on a free port for each test (a fake backend answers instantly)."""
    from antidistill.gateway.server import BackgroundServer

    app, store, backend, api_key, account_id = make_gateway_app(tmp_path / "gw")
    with BackgroundServer(app) as srv:
        yield LiveGateway(srv.url, store, backend, api_key, account_id, app)
    store.close()


# ---- a tiny model ------------------------------------------------------------------------------------------
def tiny_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Pairs whose answers follow a learnable rule: the colour named in the prompt, then a fixed phrase."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, subject = rng.choice(COLOURS), rng.choice(SUBJECTS)
        prompt = f"tell me about {colour} {subject} number {i}"
        response = f"the {subject} are {colour} and the {subject} are happy"
        out.append(Pair(prompt, response, "stop" if i % 2 else "length"))
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """A word-level tokenizer over the tiny pairs' words, with special tokens and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
    words = sorted(
        {w for p in tiny_pairs(200) for w in (p.prompt + " " + p.response).split()}
        | {"user", "assistant", "system"}
        | {str(i) for i in range(200)}
    )
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, layers: int = 4, seed: int = 0) -> Any:
    """A random Llama with tied embeddings: about 60k parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=1,
        eos_token_id=3,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()
