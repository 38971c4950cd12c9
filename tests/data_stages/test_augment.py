"""LLM prompt augmentation against a scripted OpenAI-compatible server on 127.0.0.1 (issue 6 item 1)."""

from __future__ import annotations

import json
import logging
import traceback

import pytest

from mace_core.augment import (
    AUGMENT_INSTRUCTION_VERSION,
    LlmClientSettings,
    augment_cache_fields,
    build_request,
    llm_prompt_pairs,
    settings_from_config,
)
from mace_core.concepts import Concept
from mace_core.config import PromptsConfig
from mace_core.prompts import match_token_indices
from tests.helpers.tokenizers import clip_tokenizer

KEY = "sk-planted-SECRET-0123456789abcdef"
ENV = {"MACE_LLM_API_KEY": KEY}
STYLE = Concept(name="van gogh", type="style", mapping="art")
CAT = Concept(name="cat", type="object", mapping="forest")


def body(*prompts: object) -> str:
    return json.dumps({"prompts": list(prompts)})


def settings(server) -> LlmClientSettings:
    return LlmClientSettings(base_url=server.url, model="test-model", temperature=0.7, timeout_s=10)


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


def run(server, tok, concept=STYLE, n=3, retries=2, environ=ENV):
    return llm_prompt_pairs(concept, n, 11, settings(server), retries, tok, environ=environ)


def test_valid_reply_gives_aligned_pairs(llm_server, tok):
    llm_server.script((200, body("a sunflower field by Van Gogh", "a night cafe, van gogh style", "van gogh skies")))
    pairs = run(llm_server, tok)
    assert [p.erased for p in pairs] == ["a sunflower field by Van Gogh", "a night cafe, van gogh style",
                                         "van gogh skies"]
    assert [p.mapping for p in pairs] == ["a sunflower field by art", "a night cafe, art style", "art skies"]
    assert [p.target for p in pairs] == ["Van Gogh", "van gogh", "van gogh"]
    for p in pairs:  # every pair is usable by Stage E
        match_token_indices(tok, p.erased, p.mapping, p.target)
    req, headers = llm_server.requests[0], llm_server.headers[0]
    assert req["model"] == "test-model" and req["seed"] == 11 and req["temperature"] == 0.7
    assert headers["authorization"] == f"Bearer {KEY}"
    assert "'van gogh'" in req["messages"][1]["content"] and "Write 3 " in req["messages"][1]["content"]


def test_invalid_prompts_are_dropped_and_missing_ones_requested(llm_server, tok):
    long_prompt = "a cat " + " ".join(["very"] * 80) + " big"
    llm_server.script(
        (200, body(
            "a cat on a sofa",          # valid
            "A CAT on a sofa",          # duplicate (case-insensitive)
            "two cats playing",         # 'cat' only inside 'cats': missing
            "a dog in the garden",      # missing
            "a cat chasing a cat",      # twice
            long_prompt,                # too long for 77 tokens
            "",                         # empty
            17,                         # not a string
            "a cat\nand a line",        # several lines
        )),
        (200, body("a cat on a sofa", "a sleepy cat in the sun", "a cat at the window")),
    )
    pairs = run(llm_server, tok, concept=CAT, n=3)
    assert [p.erased for p in pairs] == ["a cat on a sofa", "a sleepy cat in the sun", "a cat at the window"]
    assert pairs[1].mapping == "a sleepy forest in the sun"
    retry = llm_server.requests[1]
    assert retry["seed"] == 12 and "Write 2 " in retry["messages"][1]["content"]
    assert "a cat on a sofa" in retry["messages"][1]["content"]  # asked not to repeat accepted prompts


@pytest.mark.parametrize(
    "first",
    [
        (200, "this is not json"),
        (200, json.dumps({"captions": ["a cat"]})),
        (500, "internal error"),
        (429, "slow down"),
        (200, ("raw", "{not an envelope")),
    ],
    ids=["malformed-json", "no-prompts-key", "http-500", "http-429", "broken-envelope"],
)
def test_transient_failures_are_retried(llm_server, tok, first):
    llm_server.script(first, (200, "```json\n" + body("a cat", "the cat sleeps") + "\n```"))
    pairs = run(llm_server, tok, concept=CAT, n=2)
    assert len(pairs) == 2 and len(llm_server.requests) == 2


def test_never_valid_raises_after_bounded_retries(llm_server, tok):
    llm_server.script((200, body("a dog", "a cow", "cats everywhere")))
    with pytest.raises(ValueError) as err:
        run(llm_server, tok, concept=CAT, n=30, retries=3)
    msg = str(err.value)
    assert "LLM returned 0 valid prompts of 30 for concept 'cat' after 3 retries" in msg
    assert "missing the concept phrase" in msg and "\n" not in msg
    assert len(llm_server.requests) == 4


def test_partial_success_reports_count(llm_server, tok):
    llm_server.script((200, body("a cat", "a cat", "a cat")))
    with pytest.raises(ValueError, match=r"returned 1 valid prompts of 3 .* after 1 retries: .*duplicate"):
        run(llm_server, tok, concept=CAT, n=3, retries=1)


def test_auth_error_is_not_retried(llm_server, tok):
    llm_server.script((401, "bad key"))
    with pytest.raises(ValueError, match=r"AuthenticationError \(HTTP 401\)"):
        run(llm_server, tok, concept=CAT, n=2, retries=5)
    assert len(llm_server.requests) == 1


def test_api_key_never_in_logs_or_errors(llm_server, tok, caplog):
    # a hostile server echoes the key back in error bodies and in prompts
    llm_server.script((500, f"Authorization: Bearer {KEY}"), (401, f"invalid key {KEY}"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ValueError) as err:
        run(llm_server, tok, concept=CAT, n=2, retries=3)
    text = "".join(traceback.format_exception(err.value))
    assert KEY not in text and KEY not in caplog.text
    assert llm_server.headers[0]["authorization"] == f"Bearer {KEY}"  # the key was really sent
    llm_server.script((200, body(f"a dog {KEY}", f"{KEY}")))
    caplog.clear()
    with pytest.raises(ValueError) as err:
        run(llm_server, tok, concept=CAT, n=2, retries=1)
    text = "".join(traceback.format_exception(err.value))
    assert KEY not in text and KEY not in caplog.text


def test_key_only_from_environment(llm_server, tok):
    llm_server.script((200, body("a cat")))
    with pytest.raises(ValueError, match="MACE_LLM_API_KEY"):
        run(llm_server, tok, concept=CAT, n=1, environ={})
    pairs = run(llm_server, tok, concept=CAT, n=1, environ={"OPENAI_API_KEY": KEY})
    assert pairs[0].erased == "a cat"
    assert "key" not in PromptsConfig.model_fields  # nothing in config can hold a key
    assert not any("key" in f for f in PromptsConfig.model_fields)


@pytest.mark.parametrize("ctype,name,mapping", [
    ("object", "cat", "forest"), ("identity", "melania trump", "a woman"),
    ("style", "van gogh", "art"), ("explicit", "nudity", "a person wearing clothes"),
])
def test_every_concept_type(llm_server, tok, ctype, name, mapping):
    concept = Concept(name=name, type=ctype, mapping=mapping)
    llm_server.script((200, body(f"an image with {name} in it", f"{name.title()} at dusk")))
    pairs = run(llm_server, tok, concept=concept, n=2)
    assert pairs[0].mapping == f"an image with {mapping} in it" and pairs[1].mapping == f"{mapping} at dusk"
    assert f"'{name}'" in llm_server.requests[0]["messages"][1]["content"]


def test_payload_and_cache_fields_are_deterministic():
    s = LlmClientSettings(base_url="http://127.0.0.1:1/v1", model="m")
    first, second = (json.dumps(build_request(s, CAT, 30, 5), sort_keys=True) for _ in range(2))
    assert first == second
    fields = augment_cache_fields(s, CAT, 30, 5)
    assert fields == augment_cache_fields(LlmClientSettings(base_url="http://other:2/v1", model="m"), CAT, 30, 5)
    assert fields["instruction_version"] == AUGMENT_INSTRUCTION_VERSION and fields["backend"] == "llm"
    for other in (augment_cache_fields(s, CAT, 31, 5), augment_cache_fields(s, CAT, 30, 6),
                  augment_cache_fields(LlmClientSettings(base_url=s.base_url, model="m2"), CAT, 30, 5),
                  augment_cache_fields(s, STYLE, 30, 5)):
        assert other != fields
    json.dumps(fields)  # JSON-serialisable for the store key


def test_settings_validation():
    with pytest.raises(ValueError, match="llm_base_url"):
        settings_from_config(PromptsConfig(backend="llm"))
    with pytest.raises(ValueError, match="http"):
        LlmClientSettings(base_url="127.0.0.1:80", model="m")
    s = settings_from_config(PromptsConfig(backend="llm", llm_base_url="http://h:1/v1", llm_model="m"))
    assert s.model == "m"
